from __future__ import annotations

import pytest

from services.loadgen import LoadConfig, LoadError, run
from services.local import LocalPlatform


def test_closed_loop_is_bounded_by_count_and_reports_percentiles(platform: LocalPlatform) -> None:
    result = run(
        LoadConfig(
            platform.address("gateway"),
            users=["1", "2", "cold"],
            concurrency=2,
            max_requests=40,
            duration_s=30,
        )
    )
    assert result.requests == 40 and not result.errors
    lat = result.latency_ms
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_open_loop_keeps_its_rate_and_duration(platform: LocalPlatform) -> None:
    result = run(LoadConfig(platform.address("gateway"), users=["1"], mode="open", rps=40, duration_s=1.0))
    assert result.requests == 40 and not result.errors
    assert result.elapsed_s < 5


def test_errors_are_counted_not_raised() -> None:
    result = run(LoadConfig("127.0.0.1:1", users=["1"], max_requests=3, timeout_s=0.5))
    assert result.requests == 3 and result.errors == {"UNAVAILABLE": 3}


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (LoadConfig("10.1.2.3:50051", users=["1"]), "gateway"),
        (LoadConfig("127.0.0.1:1", users=["1"], duration_s=601), "duration"),
        (LoadConfig("127.0.0.1:1", users=["1"], mode="burst"), "mode"),
        (LoadConfig("127.0.0.1:1", users=[]), "users"),
    ],
)
def test_bad_settings_are_refused(config: LoadConfig, named: str) -> None:
    with pytest.raises(LoadError, match=f"^{named}:"):
        run(config)
