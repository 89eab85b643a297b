"""Bytes that are no protobuf message, sent to every RPC of every service process: INVALID_ARGUMENT
naming the method's request (not grpc's UNKNOWN), and every server still SERVING afterwards."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from recsys.v1 import features_pb2, gateway_pb2, ranking_pb2, retrieval_pb2
from services.healthcheck import health_status
from services.local import LocalPlatform

SERVICES = {
    "gateway": gateway_pb2,
    "features": features_pb2,
    "retrieval": retrieval_pb2,
    "ranking": ranking_pb2,
}
# a field 1 of wire type 2 whose length runs past the end; a truncated varint; an invalid wire type
UNDECODABLE = [b"\x0a\xff\xff\xff\x0f", b"\x08\xff", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"]


def methods(name: str) -> list[str]:
    module = SERVICES[name]
    (service,) = module.DESCRIPTOR.services_by_name.values()
    return [f"/{service.full_name}/{m.name}" for m in service.methods]


@pytest.mark.parametrize("name", list(SERVICES))
def test_undecodable_bytes_are_invalid_argument_on_every_rpc(platform: LocalPlatform, name: str) -> None:
    address = platform.address(name)
    with grpc.insecure_channel(address) as channel:
        for path in methods(name):
            call = channel.unary_unary(path, None, None)  # no serializers: the bytes go out as they are
            for payload in UNDECODABLE:
                with pytest.raises(grpc.RpcError) as raised:
                    call(payload, timeout=10)
                error = raised.value
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, payload, error.details())
                assert str(error.details()).startswith(
                    f"request: not a valid {path.rsplit('/', 1)[1]} request"
                )
    assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
