from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.client import Client
from services.common.otlp_receiver import OtlpReceiver
from services.local import LocalPlatform, free_port
from tests.support import RELAXED_BUDGETS


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def metrics_ports() -> dict[str, int]:
    """The platform's Prometheus scrape port of each service."""
    return {name: free_port() for name in ("gateway", "features", "retrieval", "ranking")}


@pytest.fixture(scope="session")
def platform(
    artifacts_root: Path,
    redis_url: str,
    otlp: OtlpReceiver,
    metrics_ports: dict[str, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalPlatform]:
    """The four services as separate processes on loopback, features in a real Redis, tracing to `otlp`,
    metrics on a Prometheus endpoint each (drift windows longer than the session)."""
    work = tmp_path_factory.mktemp("platform")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRICS_EXPORTER": "prometheus",
    }
    extra = {name: ["--metrics-port", str(port)] for name, port in metrics_ports.items()}
    extra["gateway"] += RELAXED_BUDGETS
    extra["ranking"] += ["--drift-window-seconds", "86400"]
    with LocalPlatform.on_free_ports(
        artifacts_root, work / "logs", redis_url=redis_url, env=env, extra_args=extra
    ) as running:
        yield running


@pytest.fixture()
def client(platform: LocalPlatform) -> Iterator[Client]:
    with Client(platform.address("gateway")) as c:
        yield c
