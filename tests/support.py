"""Helpers the tests share: free ports, a real redis-server, waiting for gRPC health."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DATA = REPO / "data" / "ml-latest-small"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run the README's test command, which installs it")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def health_status(address: str, service: str = "") -> int:
    """The grpc.health.v1 status of `service` at `address` (UNKNOWN when unreachable)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN
        return int(reply.status)


def wait_serving(address: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while health_status(address) != health_pb2.HealthCheckResponse.SERVING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{address} did not report SERVING within {timeout_s}s")
        time.sleep(0.1)
