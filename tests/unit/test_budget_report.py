"""`recsys budget report` on spans written by the real SDK through the file exporter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.budget import build
from services.common.otlp_receiver import read_json_lines
from services.common.telemetry import JsonLinesSpanExporter


def write_spans(path: Path, stage_ms: dict[str, list[float]], budgets: dict[str, float]) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "recsys-gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    tracer = provider.get_tracer("test")
    t0 = 1_700_000_000_000_000_000
    for stage, durations in stage_ms.items():
        for i, ms in enumerate(durations):
            start = t0 + i * 10**9
            span = tracer.start_span(stage, start_time=start)
            span.set_attribute("recsys.budget_ms", budgets[stage])
            span.set_attribute("recsys.over_budget", ms > budgets[stage])
            span.end(end_time=start + int(ms * 1e6))
    tracer.start_span("unbudgeted").end()
    provider.shutdown()


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "budget", "report", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_percentiles_and_budgets_from_the_file_exporter(tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    write_spans(
        spans, {"recsys.gateway.ranking": [float(i) for i in range(1, 101)]}, {"recsys.gateway.ranking": 20.0}
    )
    (only,) = build(read_json_lines([spans]))
    assert (only.stage, only.count, only.budget_ms) == ("recsys.gateway.ranking", 100, 20.0)
    assert abs(only.p50_ms - 51) < 0.01 and abs(only.p99_ms - 100) < 0.01
    assert only.over_budget == 80 and only.violated


def test_exit_code_flags_only_the_slow_stage(tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    write_spans(
        spans,
        {"recsys.gateway.features": [1.0] * 50, "recsys.gateway.ranking": [1.0] * 40 + [30.0] * 10},
        {"recsys.gateway.features": 5.0, "recsys.gateway.ranking": 10.0},
    )
    result = report("--spans", str(spans))
    assert result.returncode == 1
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert lines["recsys.gateway.features"].endswith("ok")
    assert lines["recsys.gateway.ranking"].endswith("VIOLATED")
    assert "recsys.gateway.ranking" in result.stderr


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    missing = report("--spans", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"resourceSpans": []}\nnot json\n')
    bad = report("--spans", str(garbage))
    assert bad.returncode == 2 and "line 2" in bad.stderr and "Traceback" not in bad.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    none = report("--spans", str(empty))
    assert none.returncode == 2 and "recsys.budget_ms" in none.stderr


def test_tracing_is_off_without_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    from services.common.telemetry import current_trace_id, setup_tracing

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert setup_tracing("gateway") is None
    # the API's no-op tracer: nothing recorded, no trace id to return
    with trace.get_tracer("test").start_as_current_span("recsys.gateway.recommend") as span:
        assert not span.is_recording()
        assert current_trace_id() == ""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "bogus")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER='bogus'"):
        setup_tracing("gateway")
