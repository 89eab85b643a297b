"""Helpers the tests share: a real redis-server on a free port, one component on a real server, paths."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TypeVar

import grpc

from recsys.v1 import gateway_pb2
from services.client import Client
from services.common.server import Component
from services.local import free_port
from services.trainer.pipeline import PipelineConfig

__all__ = [
    "BUNDLED_DATA",
    "RELAXED_BUDGETS",
    "REPO",
    "TEST_SETTINGS",
    "free_port",
    "light_pipeline",
    "redis_server",
    "serving",
]

#: Gateway flags for tests about behaviour, not speed: budgets a loaded CI machine cannot overrun, so a
#: response degrades only when a test makes it.
RELAXED_BUDGETS = [
    "--total-budget-ms",
    "5000",
    "--features-budget-ms",
    "1000",
    "--retrieval-budget-ms",
    "1000",
    "--ranking-budget-ms",
    "2000",
]

#: The pipeline the tests train: every source and every stage (two label windows, two seeded ranker
#: models), sized for a 2-core CI machine. Tests check behaviour; the benchmarks measure quality with the
#: defaults.
TEST_SETTINGS = (
    "protocol.windows=2",
    "ranker.seeds=2",
    "ranker.rounds=40",
    "ranker.min_data_in_leaf=50",
    "ease.max_items=1500",
    "seqease.max_items=1500",
    "rp3.max_items=1500",
    "ease.neighbours=200",
    "seqease.neighbours=200",
    "rp3.neighbours=200",
    "seq.neighbours=200",
    "als.factors=32",
    "als.iterations=8",
)

S = TypeVar("S")


def light_pipeline(*more: str) -> PipelineConfig:
    """The default pipeline with TEST_SETTINGS (and `more` NAME=VALUE settings) applied."""
    return PipelineConfig().with_settings((*TEST_SETTINGS, *more))


REPO = Path(__file__).resolve().parent.parent
BUNDLED_DATA = REPO / "data" / "ml-latest-small"


@contextmanager
def redis_server(
    workdir: Path,
    port: int | None = None,
    *,
    durable: bool = False,
    password: str | None = None,
    tls_dir: Path | None = None,
) -> Iterator[str]:
    """A real redis-server on `port` (default: a free one) on loopback; yields its URL (see `start_redis`)."""
    port = port or free_port()
    proc = start_redis(workdir, port, durable=durable, password=password, tls_dir=tls_dir)
    try:
        scheme = "redis" if tls_dir is None else "rediss"
        yield f"{scheme}://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def start_redis(
    workdir: Path,
    port: int,
    *,
    durable: bool = False,
    password: str | None = None,
    tls_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    """redis-server on loopback `port`, once it accepts connections (what `redis_server` runs).

    No persistence, or with `durable` an append-only file fsynced on every write (in `workdir`: a restart
    keeps it). `password`: AUTH required (requirepass). `tls_dir`: certificates as `recsys certs make`
    writes them: TLS only (no plaintext port), client certificates signed by its CA required."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run the README's test command, which installs it")
    workdir.mkdir(parents=True, exist_ok=True)
    args = ["--port", str(port)]
    if tls_dir is not None:
        args = [
            *("--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(tls_dir / "tls.crt"), "--tls-key-file", str(tls_dir / "tls.key")),
            *("--tls-ca-cert-file", str(tls_dir / "ca.crt"), "--tls-auth-clients", "yes"),
        ]
    args += ["--requirepass", password] if password else []
    args += ["--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    args += ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)


@asynccontextmanager
async def serving(component: Component, stub_class: Callable[[grpc.aio.Channel], S]) -> AsyncIterator[S]:
    """`component` alone on a real grpc.aio server on a free loopback port; yields a stub to it."""
    server = grpc.aio.server()
    component.add_to_server(server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield stub_class(channel)
    finally:
        await server.stop(None)
        await component.close()


def wait_until_healthy(client: Client, user: str, timeout_s: float = 30) -> gateway_pb2.RecommendResponse:
    """The first Recommend for `user` that no fallback answered (a restarted backend reconnected)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.recommend(user, k=10)
        if not response.degraded:
            return response
        assert time.monotonic() < deadline, f"still degraded: {list(response.degraded_reasons)}"
        time.sleep(0.2)
