"""`python -m services.healthcheck HOST:PORT [SERVICE]`: exit 0 when the grpc.health.v1 status of
SERVICE (default: the server as a whole) is SERVING, 1 otherwise. The Compose file's health checks
(the image has no grpc_health_probe); `services.local` waits on the same check."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health_status(address: str, service: str = "", timeout_s: float = 1.0) -> int:
    """The grpc.health.v1 status at `address` (UNKNOWN when it does not answer)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
        return int(reply.status)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m services.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    status = health_status(argv[0], argv[1] if len(argv) == 2 else "", timeout_s=2.0)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
