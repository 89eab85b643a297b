from recsys.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user", "candidates", "item_features", "item_feature_dim", "k")
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ITEM_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ITEM_FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    user: _common_pb2.UserFeatures
    candidates: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    item_features: bytes
    item_feature_dim: int
    k: int
    def __init__(self, user: _Optional[_Union[_common_pb2.UserFeatures, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., item_features: _Optional[bytes] = ..., item_feature_dim: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "artifact_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    artifact_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., artifact_version: _Optional[str] = ...) -> None: ...
