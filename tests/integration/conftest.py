from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.client import Client
from services.common.otlp_receiver import OtlpReceiver
from services.local import LocalPlatform
from tests.support import RELAXED_BUDGETS


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def platform(
    artifacts_root: Path, redis_url: str, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPlatform]:
    """The four services as separate processes on loopback, features in a real Redis, tracing to `otlp`."""
    work = tmp_path_factory.mktemp("platform")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with LocalPlatform.on_free_ports(
        artifacts_root, work / "logs", redis_url=redis_url, env=env, extra_args={"gateway": RELAXED_BUDGETS}
    ) as running:
        yield running


@pytest.fixture()
def client(platform: LocalPlatform) -> Iterator[Client]:
    with Client(platform.address("gateway")) as c:
        yield c
