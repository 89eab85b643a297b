"""Several processes per service: the gateway balances over the replicas (gRPC round_robin)."""

from __future__ import annotations

import time
from pathlib import Path

from services.client import Client
from services.common.otlp_receiver import OtlpReceiver
from services.local import LocalPlatform
from tests.support import RELAXED_BUDGETS

SERVER_KIND = 2


def test_gateway_balances_over_backend_replicas_and_survives_losing_one(
    artifacts_root: Path, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    platform = LocalPlatform.on_free_ports(
        artifacts_root,
        tmp_path / "logs",
        event_log=tmp_path / "events.jsonl",
        replicas={"retrieval": 2, "ranking": 2},
        extra_args={"gateway": RELAXED_BUDGETS},
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",  # ms: pushed while the versions are served
        },
    )
    with platform, Client(platform.address("gateway")) as client:
        assert platform.target("ranking").startswith("ipv4:") and platform.target("ranking").count(",") == 1
        traces = {client.recommend(f"user-{i % 7}", k=5).trace_id for i in range(20)}
        deadline = time.monotonic() + 15
        while True:
            served = {
                (s.service, s.instance)
                for s in otlp.spans
                if s.trace_id in traces
                and s.kind == SERVER_KIND
                and s.service in ("recsys-ranking", "recsys-retrieval")
            }
            if len(served) == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert served == {
            ("recsys-ranking", "ranking"),
            ("recsys-ranking", "ranking.1"),
            ("recsys-retrieval", "retrieval"),
            ("recsys-retrieval", "retrieval.1"),
        }
        # One ranking replica gone: round_robin drops it, and requests keep being ranked.
        platform.processes.pop("ranking.1").kill()
        time.sleep(0.5)
        ranked = [not client.recommend(f"user-{i}", k=5).degraded for i in range(10)]
        assert all(ranked[2:]), ranked
    # Metrics went to the same OTLP endpoint (the default exporter when one is set).
    assert {
        "recsys.rpc.requests",
        "recsys.rpc.duration",
        "recsys.gateway.stage.duration",
        "recsys.retrieval.candidates",
        "recsys.ranking.feature_rows",
    } <= otlp.metric_names
