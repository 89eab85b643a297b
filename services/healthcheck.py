"""`python -m services.healthcheck [TLS flags] HOST:PORT [SERVICE]`: exit 0 when the grpc.health.v1 status
of SERVICE (default: the server as a whole) is SERVING, 1 otherwise, 2 on bad flags or TLS files. The
Compose file's health checks and, with TLS on, the chart's probes (the kubelet's gRPC probes cannot do TLS;
the image has no grpc_health_probe); `services.local` waits on the same check."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ConfigError
from services.common.tls import ClientTLS, add_client_arguments, channel, client_from_args


def health_status(
    address: str, service: str = "", timeout_s: float = 1.0, tls: ClientTLS | None = None
) -> int:
    """The grpc.health.v1 status at `address` (UNKNOWN when it does not answer); over TLS with `tls`
    (ConfigError on a bad TLS file)."""
    with channel(address, tls) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
        return int(reply.status)


def parser() -> argparse.ArgumentParser:
    """The command's flags (the chart's probes are checked against them too)."""
    p = argparse.ArgumentParser(prog="python -m services.healthcheck", description=__doc__)
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("service", nargs="?", default="", help="the service's health entry (default: '')")
    add_client_arguments(p, "the service")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        status = health_status(args.address, args.service, timeout_s=2.0, tls=client_from_args(args))
    except ConfigError as e:
        print(f"healthcheck: {e}", file=sys.stderr)
        return 2
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
