"""Histograms, PSI and the ranking service's windowed counts (services.common.drift,
services.ranking.monitor), against values worked out by hand; `recsys monitor drift` and the metrics
exporter's start-up check."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.cli import main as cli_main
from services.common.drift import EPSILON, Histogram, LiveCounts, histogram, psi, reference
from services.ranking.monitor import FeatureMonitor
from tests.support import REPO, free_port

NAN = math.nan


def test_bins_are_closed_on_the_right_and_nan_is_counted_apart() -> None:
    h = histogram([1.0, 2.0], np.array([-5.0, 1.0, 1.5, 2.0, 2.5, np.inf, NAN]))
    assert h.counts == (2, 2, 2)  # (-inf, 1]: -5, 1; (1, 2]: 1.5, 2; (2, inf): 2.5, inf
    assert h.missing == 1 and h.total == 7


def test_reference_edges_are_the_deciles_and_repeated_ones_merge() -> None:
    h = reference(np.arange(1, 101, dtype=np.float64))
    assert h.edges == tuple(float(v) for v in range(10, 100, 10))
    assert h.counts == (10,) * 10
    binary = reference(np.array([0.0] * 70 + [1.0] * 30 + [NAN] * 5))
    assert binary.edges == (0.0, 1.0) and binary.counts == (70, 30, 0) and binary.missing == 5
    assert reference(np.array([NAN, NAN])) == Histogram((), (0,), 2)


def test_psi_by_hand() -> None:
    ref = Histogram((0.0,), (50, 50), 0)
    live = Histogram((0.0,), (80, 20), 0)
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(ref, live) == pytest.approx(expected)
    assert psi(ref, ref) == 0.0
    # an empty bin counts as EPSILON on both sides: here the missing bin and the live's first bin
    empty = Histogram((0.0,), (0, 100), 0)
    shares = (EPSILON, 1.0, EPSILON)
    by_hand = sum((li - r) * math.log(li / r) for li, r in zip(shares, (0.5, 0.5, EPSILON), strict=True))
    assert psi(ref, empty) == pytest.approx(by_hand)
    assert psi(ref, empty) > 0.2
    assert math.isnan(psi(ref, Histogram((0.0,), (0, 0), 0)))
    with pytest.raises(ValueError, match="different edges"):
        psi(ref, Histogram((1.0,), (1, 1), 0))


def test_malformed_histograms_are_refused() -> None:
    with pytest.raises(ValueError, match="3 counts for 1 edges"):
        Histogram((0.0,), (1, 2, 3))
    with pytest.raises(ValueError, match="edges must increase"):
        Histogram((1.0, 1.0), (1, 2, 3))


def test_live_counts_equal_one_histogram_per_column() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    x[rng.random(x.shape) < 0.1] = NAN
    x[:5, 0] = 0.0  # exactly on an edge
    edges = [[-1.0, 0.0, 1.0], [0.5], []]
    live = LiveCounts(["a", "b", "c"], edges)
    live.add(x[:200])
    live.add(x[200:])
    got = live.histograms()
    for j, name in enumerate("abc"):
        assert got[name] == histogram(edges[j], x[:, j]), name
    assert live.rows == 500


def test_the_monitor_counts_a_sample_per_request_in_windows() -> None:
    now = [1000.0]
    ref = {"a": Histogram((0.0,), (5, 5)), "b": Histogram((), (10,))}
    monitor = FeatureMonitor(["a", "unreferenced", "b"], ref, 4, 60.0, clock=lambda: now[0])
    rows = np.column_stack([np.full(10, -1.0), np.zeros(10), np.full(10, NAN)]).astype(np.float32)
    monitor.observe(rows)  # 4 of the 10 rows
    monitor.observe(rows[:2])  # both
    window = monitor.current()
    assert window.rows == 6 and set(window.histograms) == {"a", "b"}
    assert window.histograms["a"].counts == (6, 0) and window.histograms["b"].missing == 6
    assert monitor.previous is None
    now[0] += 61
    monitor.observe(rows[:1])
    assert monitor.previous is not None and monitor.previous.rows == 6
    assert (monitor.previous.start, monitor.previous.end) == (1000.0, 1061.0)
    assert monitor.current().rows == 1
    assert not FeatureMonitor(["a"], {}, 4, 60.0).enabled  # a version without a reference
    assert not FeatureMonitor(["a"], ref, 0, 60.0).enabled  # sampling off


def test_a_version_without_a_reference_is_reported_not_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "stats.json"
    window = {"start_ms": 0, "end_ms": 1, "rows": 5000, "features": {}}
    saved.write_text(json.dumps({"artifact_version": "v1", "reference": {}, "current": window}))
    assert cli_main(["monitor", "drift", "--from", str(saved)]) == 0
    assert "no reference" in capsys.readouterr().out


def test_an_unknown_metrics_exporter_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_METRICS_EXPORTER": "graphite"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "gateway", "--port", str(free_port())],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "recsys serve: OTEL_METRICS_EXPORTER='graphite': expected otlp, console, prometheus, none"
    )
