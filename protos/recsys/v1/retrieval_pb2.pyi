from recsys.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrieveRequest(_message.Message):
    __slots__ = ("user_id", "user_embedding", "recent_item_ids", "exclude_item_ids", "n")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    user_embedding: _containers.RepeatedScalarFieldContainer[float]
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    n: int
    def __init__(self, user_id: _Optional[str] = ..., user_embedding: _Optional[_Iterable[float]] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., n: _Optional[int] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("candidates", "artifact_version")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    artifact_version: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., artifact_version: _Optional[str] = ...) -> None: ...
