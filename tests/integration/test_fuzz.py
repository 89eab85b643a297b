"""Every RPC of every service fuzzed over the wire: messages generated from the proto descriptors
(hostile strings, huge repeated fields, NaN and infinities, unknown enum values, nested messages) and
raw undecodable bytes. Only OK or a client-error status comes back, and every server stays SERVING.

Deterministic (derandomized hypothesis), on a platform of its own so junk feedback stays out of the
session's log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message, message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.v1 import features_pb2, gateway_pb2, ranking_pb2, retrieval_pb2
from services.healthcheck import health_status
from services.local import LocalPlatform
from tests.support import RELAXED_BUDGETS

pytestmark = pytest.mark.timeout(600)

#: (replica, service descriptor) for every service.
SERVICES = [
    ("gateway", gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]),
    ("features", features_pb2.DESCRIPTOR.services_by_name["FeatureService"]),
    ("retrieval", retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"]),
    ("ranking", ranking_pb2.DESCRIPTOR.services_by_name["RankingService"]),
]
METHODS = [(replica, m) for replica, service in SERVICES for m in service.methods]
#: What a client may get for a bad request; anything else (UNKNOWN, INTERNAL, DEADLINE_EXCEEDED, a
#: crash's UNAVAILABLE) is a server bug.
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
HOSTILE_STRINGS = [
    "",
    " ",
    "\x00",
    "a" * 10_000,
    "../../etc/passwd",
    "'; DROP TABLE items;--",
    "🎬" * 300,
    "\u202e1",
]
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 3


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if kind == FieldDescriptor.TYPE_FLOAT:
            return st.floats(allow_nan=True, allow_infinity=True, width=32)
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 50)  # mostly values the enum does not define
    low, high = INT_RANGES[kind]
    return st.one_of(
        st.sampled_from([low, -1, 0, 1, high] if low < 0 else [0, 1, high]), st.integers(low, high)
    )


def value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1)
    return scalar(field)


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[message.Message]:
    cls = message_factory.GetMessageClass(desc)
    if depth > MAX_DEPTH:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key, val = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            fields[f.name] = st.dictionaries(scalar(key), value(val, depth), max_size=4)
        elif f.is_repeated:
            element = value(f, depth)
            # A few, or thousands of the same (the services' size limits must hold).
            fields[f.name] = st.one_of(st.lists(element, max_size=4), element.map(lambda v: [v] * 3000))
        else:
            fields[f.name] = value(f, depth)
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: build(cls, values))


def build(cls: type[message.Message], values: dict[str, Any]) -> message.Message:
    msg = cls()
    for name, v in values.items():
        target: Any = getattr(msg, name)
        if isinstance(v, dict):
            for k, item in v.items():
                if isinstance(item, message.Message):
                    target[k].CopyFrom(item)
                else:
                    target[k] = item
        elif isinstance(v, list):
            for item in v:
                if isinstance(item, message.Message):
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        elif isinstance(v, message.Message):
            target.CopyFrom(v)
        else:
            setattr(msg, name, v)
    return msg


@pytest.fixture(scope="module")
def fuzzed(artifacts_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    work = tmp_path_factory.mktemp("fuzz")
    with LocalPlatform.on_free_ports(
        artifacts_root,
        work / "logs",
        event_log=work / "events.jsonl",
        extra_args={"gateway": RELAXED_BUDGETS},
    ) as platform:
        yield platform


def call(
    platform: LocalPlatform, replica: str, method: descriptor.MethodDescriptor, payload: bytes
) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    with grpc.insecure_channel(platform.address(replica)) as channel:
        rpc = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            rpc(payload, timeout=30)
        except grpc.RpcError as e:
            code: grpc.StatusCode = e.code()
            return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("replica", "method"), METHODS, ids=[f"{r}.{m.name}" for r, m in METHODS])
def test_generated_messages_get_ok_or_a_client_error(
    fuzzed: LocalPlatform, replica: str, method: descriptor.MethodDescriptor
) -> None:
    assert not method.client_streaming and not method.server_streaming
    seen: set[grpc.StatusCode] = set()

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(messages(method.input_type))
    def one(request: message.Message) -> None:
        code = call(fuzzed, replica, method, request.SerializeToString())
        seen.add(code)
        assert code in CLIENT_ERRORS, f"{replica} {method.name}: {code.name} for {request!r:.300}"

    one()
    assert health_status(fuzzed.address(replica)) == health_pb2.HealthCheckResponse.SERVING
    print(f"{replica}.{method.name}: {sorted(c.name for c in seen)}")


@pytest.mark.parametrize(("replica", "method"), METHODS, ids=[f"{r}.{m.name}" for r, m in METHODS])
@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\xff\x01", b"\x08" + b"\xff" * 11])
def test_undecodable_bytes_are_invalid_argument(
    fuzzed: LocalPlatform, replica: str, method: descriptor.MethodDescriptor, payload: bytes
) -> None:
    assert call(fuzzed, replica, method, payload) == grpc.StatusCode.INVALID_ARGUMENT
    assert health_status(fuzzed.address(replica)) == health_pb2.HealthCheckResponse.SERVING
