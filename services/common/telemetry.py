"""Logging and tracing set-up shared by every process.

Logs: one JSON object per line on stderr, with the service, the current trace and span ids, and any
`extra={...}` fields. Traces: OpenTelemetry SDK; the exporter is chosen by the standard variables:
`OTEL_TRACES_EXPORTER` = otlp | console | file | none (default: otlp when an
`OTEL_EXPORTER_OTLP_*ENDPOINT` is set, else none; `file` appends OTLP JSON lines to
`RECSYS_TRACES_FILE`, where `{service}` and `{pid}` are replaced), `OTEL_SERVICE_NAME` (default `recsys-<service>`), and the OTLP exporter's own
`OTEL_EXPORTER_OTLP_*` variables. gRPC servers and `grpc.aio` clients are instrumented so that the
trace context crosses every hop; with no exporter, tracing is off (no spans, empty trace ids).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event["trace_id"] = format(context.trace_id, "032x")
            event["span_id"] = format(context.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                event[key] = value
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def setup_logging(service: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _exporter(service: str) -> SpanExporter | None:
    endpoint_set = any(
        os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "otlp" if endpoint_set else "none").strip().lower()
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if choice == "file":
        template = os.environ.get("RECSYS_TRACES_FILE", "")
        if not template:
            raise ValueError(
                "OTEL_TRACES_EXPORTER=file needs RECSYS_TRACES_FILE (a path; {service} and {pid} expand)"
            )
        return JsonLinesSpanExporter(Path(template.format(service=service, pid=os.getpid())))
    raise ValueError(f"OTEL_TRACES_EXPORTER={choice!r}: expected otlp, console, file or none")


class JsonLinesSpanExporter(SpanExporter):
    """Appends each batch as one OTLP JSON line (an ExportTraceServiceRequest), what `recsys budget
    report` and the OpenTelemetry Collector's file exporter both read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        from services.common.otlp_receiver import to_json_line

        with self.path.open("a") as f:
            f.write(to_json_line(encode_spans(spans)))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def setup_tracing(service: str) -> TracerProvider | None:
    """Install the global tracer provider and instrument gRPC; call before creating servers or channels.

    With no exporter (OTEL_TRACES_EXPORTER=none, the default without an OTLP endpoint) nothing is
    installed and the API's no-op tracer stays: recording spans that nobody exports cost about 3 ms of
    CPU per Recommend across the four services (bench/latency_1m.py, 1M items). The standard
    OTEL_TRACES_SAMPLER variables (e.g. parentbased_traceidratio) cut the cost when exporting."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer

    exporter = _exporter(service)
    if exporter is None:
        return None
    os.environ.setdefault("OTEL_SERVICE_NAME", f"recsys-{service}")
    provider = TracerProvider(resource=Resource.create({"recsys.service": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    return provider


def tracer(service: str) -> trace.Tracer:
    return trace.get_tracer(f"recsys.{service}")


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
