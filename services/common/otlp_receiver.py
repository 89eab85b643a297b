"""A small OTLP/gRPC trace receiver: what the services export to when there is no collector
(tests, and reports read from a live run). Spans are kept in memory as flat records, and can be read
from OTLP JSON lines files (one ExportTraceServiceRequest per line, as the file exporter writes).
Metric exports are accepted too (the services push both to one endpoint); only their names are kept."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    #: The resource's service.instance.id ("" when unset): which replica produced the span.
    instance: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else None


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    received = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        instance = str(resource.get("service.instance.id", ""))
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                received.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        service=service,
                        instance=instance,
                        kind=s.kind,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                    )
                )
    return received


def to_json_line(request: trace_service_pb2.ExportTraceServiceRequest) -> str:
    return json_format.MessageToJson(request, indent=None) + "\n"


def read_json_lines(paths: Iterable[Path]) -> list[ReceivedSpan]:
    """Spans from OTLP JSON lines files; a malformed line raises ValueError naming the file and line."""
    spans: list[ReceivedSpan] = []
    for path in paths:
        with path.open() as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    request = json_format.Parse(line, trace_service_pb2.ExportTraceServiceRequest())
                except json_format.ParseError as e:
                    raise ValueError(f"{path} line {number}: not an OTLP JSON trace export ({e})") from e
                spans.extend(flatten(request))
    return spans


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: OtlpReceiver) -> None:
        self.sink = sink

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.sink.add(flatten(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: OtlpReceiver) -> None:
        self.sink = sink

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        names = {m.name for r in request.resource_metrics for s in r.scope_metrics for m in s.metrics}
        with self.sink._lock:
            self.sink.metric_names |= names
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """Listens on `host:port` (0 picks a free port); `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        #: the names of every metric pushed to this receiver
        self.metric_names: set[str] = set()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self.server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.endpoint = f"http://{host}:{self.port}"

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def start(self) -> OtlpReceiver:
        self.server.start()
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        self.server.stop(grace_s)
