"""OpenTelemetry metrics beside the traces: what an operator puts on a dashboard and alerts on.

The exporter is chosen by the standard variable `OTEL_METRICS_EXPORTER` = otlp | console | prometheus |
none (default: otlp when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, else none), every 10 s or
`OTEL_METRIC_EXPORT_INTERVAL` ms. `prometheus` serves a scrape endpoint on the service's
`--metrics-port` (default 9464; needs the `prometheus` extra). With none, the API's no-op meter records nothing.

Instruments (every one carries the `recsys.service` resource attribute):

    recsys.rpc.requests            counter    method, code     every RPC served (services.common.rpc)
    recsys.rpc.duration            histogram  method           ms, from arrival to the reply
    recsys.gateway.stage.duration  histogram  stage            ms per gateway stage (features, ...)
    recsys.gateway.degraded        counter    stage            responses a fallback answered, by stage
    recsys.gateway.exposure_spool  gauge      -                bytes of exposures spooled, not yet written
    recsys.features.events.spooled counter    -                events spooled while the store was unreachable
    recsys.features.events.drained counter    -                spooled events delivered to the store
    recsys.gateway.auth.refused    counter    reason, method   calls refused by authentication (reason:
                                                           missing, malformed, unknown key; role)
    recsys.retrieval.candidates    counter    source           candidates sent to ranking, by source
    recsys.ranking.feature_psi     gauge      feature, version PSI of the scored features (services.ranking.monitor)
    recsys.ranking.feature_rows    counter    feature, version, bin  the sampled rows per reference bin
                                                           (`recsys monitor drift --metrics-url` reads it)
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import metrics

CHOICES = ("otlp", "console", "prometheus", "none")


def meter(service: str) -> metrics.Meter:
    return metrics.get_meter(f"recsys.{service}")


def exporter_choice() -> str:
    """OTEL_METRICS_EXPORTER, checked; ValueError naming the variable when it is unknown."""
    endpoint_set = any(
        os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )
    choice = os.environ.get("OTEL_METRICS_EXPORTER", "otlp" if endpoint_set else "none").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"OTEL_METRICS_EXPORTER={choice!r}: expected {', '.join(CHOICES)}")
    return choice


def setup_metrics(service: str, prometheus_port: int) -> Any:
    """Install the global meter provider for `service` (None with no exporter); call before creating
    the component, whose instruments then report through it."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    choice = exporter_choice()
    if choice == "none":
        return None
    reader: MetricReader
    if choice == "prometheus":
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server
        except ImportError as e:
            raise ValueError(
                "OTEL_METRICS_EXPORTER=prometheus needs the prometheus extra: pip install 'recsys[prometheus]'"
            ) from e
        start_http_server(prometheus_port)
        reader = PrometheusMetricReader()
    elif choice == "console":
        reader = PeriodicExportingMetricReader(ConsoleMetricExporter())
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"recsys.service": service}))
    metrics.set_meter_provider(provider)
    return provider
