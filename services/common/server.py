"""One server bootstrap for every service: grpc.aio server (plaintext, TLS or mutual TLS), standard health
service (NOT_SERVING until the artifacts are loaded), reflection, artifact hot reload, and graceful shutdown
on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import threadpoolctl  # type: ignore[import-untyped, unused-ignore]
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import meters, telemetry
from services.common.artifacts import ArtifactVersion, ArtifactWatcher
from services.common.config import ConfigError, non_negative, option, port_number, positive
from services.common.decoding import DecodeErrorInterceptor
from services.common.faults import DelayInterceptor
from services.common.loops import PeriodicTask
from services.common.tls import ServerTLS

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Fields every service has; each service's config extends this."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(50051, "port to listen on", port_number)
    artifacts_dir: Path = option(Path("artifacts"), "artifact root holding CURRENT and the versions")
    reload_interval_s: float = option(2.0, "how often to look for a new CURRENT version", positive)
    grace_s: float = option(5.0, "how long in-flight calls may finish at shutdown", positive)
    log_level: str = option("info", "debug, info, warning or error")
    inject_delay_ms: float = option(
        0.0, "fault drill: delay every RPC but health checks by this many ms", non_negative
    )
    metrics_port: int = option(
        9464, "Prometheus scrape port, with OTEL_METRICS_EXPORTER=prometheus", port_number
    )
    tls_cert: Path | None = option(
        None, "PEM certificate (chain) to serve TLS with, re-read when it changes (with --tls-key)"
    )
    tls_key: Path | None = option(None, "PEM private key of --tls-cert (unencrypted)")
    tls_client_ca: Path | None = option(
        None,
        "PEM CA certificates: require every client to present a certificate signed by one (mutual TLS)",
    )

    def validate(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together (RECSYS_TLS_CERT, RECSYS_TLS_KEY)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")


class Component(Protocol):
    """What a service hands to `serve`."""

    #: Short name: "features", "retrieval", "ranking", "gateway".
    name: str
    #: Fully qualified gRPC service name, e.g. "recsys.v1.FeatureService" (health and reflection).
    service_name: str
    #: False for a service that can answer without artifacts (SERVING as soon as it listens).
    needs_artifacts: bool

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def load(self, version: ArtifactVersion) -> None:
        """Build the state for `version` completely, then swap it in; raise to refuse the version."""

    async def close(self) -> None: ...


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def server_options() -> list[tuple[str, int]]:
    # Clients re-resolve DNS only when a connection closes: ageing connections out lets a gateway's
    # round_robin discover replicas added by an autoscaler. The grace lets in-flight calls finish.
    return [
        *channel_options(),
        ("grpc.max_connection_age_ms", 30_000),
        ("grpc.max_connection_age_grace_ms", 10_000),
    ]


def server_tls(config: ServerConfig) -> ServerTLS | None:
    """The TLS `config` asks for, its files read and checked (StartupError naming a bad one)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        return ServerTLS(config.tls_cert, config.tls_key, config.tls_client_ca)
    except ConfigError as e:
        raise StartupError(str(e)) from None


async def serve(
    component: Component,
    config: ServerConfig,
    stop: asyncio.Event | None = None,
    tls: ServerTLS | None = None,
) -> None:
    """Run `component` until SIGTERM/SIGINT (or `stop` is set), then shut down gracefully. `tls`: the
    config's TLS already read (`server_tls`), else it is read here."""
    tls = tls or server_tls(config)
    # Optional: interceptors a component puts in front of every other (the gateway's authentication), so a
    # call they refuse is never decoded, delayed or handled.
    interceptors: list[grpc.aio.ServerInterceptor] = [  # type: ignore[type-arg]
        *getattr(component, "interceptors", list)(),
        DecodeErrorInterceptor(),
    ]
    if config.inject_delay_ms > 0:
        interceptors.append(DelayInterceptor(config.inject_delay_ms))
    server = grpc.aio.server(options=server_options(), interceptors=interceptors)
    component.add_to_server(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            component.service_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )

    async def set_serving(serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", component.service_name):
            await health_servicer.set(name, status)

    await set_serving(False)
    address = f"{config.host}:{config.port}"
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.credentials())
    if port == 0:
        raise OSError(f"{component.name}: cannot listen on {address}")
    await server.start()
    log.info(
        "listening",
        extra={
            "address": address,
            "component": component.name,
            "tls": "off" if tls is None else "mutual" if tls.mutual else "on",
            **({} if tls is None else tls.files.value.describe()),
        },
    )

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    watch: PeriodicTask | None = None
    if component.needs_artifacts:
        # Optional: a component that can serve PINNED versions beside CURRENT (experiment arms).
        watcher = ArtifactWatcher(
            config.artifacts_dir,
            component.load,
            pin=getattr(component, "load_pinned", None),
            unpin=getattr(component, "unpin", None),
        )

        pending: set[asyncio.Task[None]] = set()

        def on_loaded() -> None:
            # A loaded version holds millions of objects for a 1M-item catalogue (id -> row dicts);
            # left to the cycle collector, each full collection walks them all and stalls requests for
            # milliseconds. Frozen objects are still freed by reference counting when a reload drops them.
            gc.freeze()
            task = loop.create_task(set_serving(True))
            pending.add(task)
            task.add_done_callback(pending.discard)

        watch = PeriodicTask("artifact-reload", lambda: watcher.reload(on_loaded), config.reload_interval_s)
    else:
        await set_serving(True)

    await stop.wait()
    log.info("shutting down", extra={"grace_s": config.grace_s})
    if watch is not None:
        await watch.stop()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_s)
    await component.close()


class StartupError(RuntimeError):
    """A service cannot start (e.g. Redis unreachable); the CLI prints the message and exits non-zero."""


def run(name: str, create: Callable[[], Component], config: ServerConfig) -> None:
    """Process entry point: logging and tracing first (so gRPC is instrumented), then the component."""
    telemetry.setup_logging(name, config.log_level)
    provider = telemetry.setup_tracing(name)
    try:
        meter_provider = meters.setup_metrics(name, config.metrics_port)
    except ValueError as e:
        raise StartupError(str(e)) from e
    # One BLAS thread: a request's small products (a user's vector, a few hundred rows) finish before a
    # team of threads would start, and replicas, not threads, use the cores (as FAISS, services.common.ann).
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")

    async def main() -> None:
        tls = server_tls(config)  # before the component: a bad file is then the only line printed
        await serve(create(), config, tls=tls)

    try:
        # uvloop: about a fifth less CPU per gRPC call than the default loop (grpc.aio wakes the loop
        # once per completion-queue event)
        uvloop.run(main())
    finally:
        if provider is not None:
            provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()
