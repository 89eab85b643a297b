"""The whole platform on one machine: the four services as separate processes on loopback.

Used by `recsys up`, `recsys demo`, the integration tests and the benchmarks, so all of them run the
same thing a person runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from grpc_health.v1 import health_pb2

from services.common.tls import ClientTLS, ServerTLS
from services.healthcheck import health_status

BACKENDS = ("features", "retrieval", "ranking")
SERVICES = (*BACKENDS, "gateway")
DEFAULT_PORTS = {"gateway": 50051, "features": 50052, "retrieval": 50053, "ranking": 50054}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ServiceFailed(RuntimeError):
    """A service process exited or did not become SERVING in time; the message has its last log lines."""


@dataclass
class LocalPlatform:
    artifacts_dir: Path
    log_dir: Path
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    redis_url: str | None = None
    event_log: Path | None = None
    #: Extra flags per service, e.g. {"gateway": ["--ranking-timeout-ms", "50"]}.
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    #: Extra environment for every process (e.g. OTEL_* variables).
    env: dict[str, str] = field(default_factory=dict)
    #: Processes per service (default 1); replica i > 0 of "ranking" is named "ranking.i".
    replicas: dict[str, int] = field(default_factory=dict)
    #: By replica name.
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Certificates as `recsys certs make` writes them (services.certs): every service serves TLS with
    #: tls.crt, the backends require client certificates signed by ca.crt, the gateway presents tls.crt.
    tls_dir: Path | None = None

    def __post_init__(self) -> None:
        for service in SERVICES:
            for name in self.replica_names(service):
                if name not in self.ports:
                    self.ports[name] = free_port(self.host)

    @classmethod
    def on_free_ports(cls, artifacts_dir: Path, log_dir: Path, **kwargs: object) -> LocalPlatform:
        return cls(artifacts_dir, log_dir, ports={}, **kwargs)  # type: ignore[arg-type]

    def replica_names(self, service: str) -> list[str]:
        return [service, *(f"{service}.{i}" for i in range(1, self.replicas.get(service, 1)))]

    def address(self, replica: str) -> str:
        """host:port of one replica ("ranking" is the first replica of the ranking service)."""
        return f"{self.host}:{self.ports[replica]}"

    def target(self, service: str) -> str:
        """The gRPC target for all of a service's replicas (round_robin balances over the list)."""
        addresses = [self.address(r) for r in self.replica_names(service)]
        return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)

    def client_tls(self) -> ClientTLS | None:
        """How a client on this machine reaches any of the services (None: plaintext). Every process is
        on this host and the certificate names localhost, whatever address --host gives."""
        if self.tls_dir is None:
            return None
        d = self.tls_dir
        return ClientTLS(d / "ca.crt", d / "client.crt", d / "client.key", server_name="localhost")

    def check_tls(self) -> None:
        """ConfigError naming the file when the TLS files would not do (before any process starts)."""
        if self.tls_dir is not None:
            ServerTLS(self.tls_dir / "tls.crt", self.tls_dir / "tls.key", self.tls_dir / "ca.crt")
            client = self.client_tls()
            assert client is not None
            client.read()

    def _tls_args(self, service: str) -> list[str]:
        if self.tls_dir is None:
            return []
        d = self.tls_dir
        server = ["--tls-cert", str(d / "tls.crt"), "--tls-key", str(d / "tls.key")]
        client = {
            "ca": d / "ca.crt",
            "client-cert": d / "tls.crt",
            "client-key": d / "tls.key",
            "server-name": "localhost",
        }
        if service == "retrieval":  # it mirrors the live catalogue from the features service
            return [
                *server,
                "--tls-client-ca",
                str(d / "ca.crt"),
                *(a for part, value in client.items() for a in (f"--features-tls-{part}", str(value))),
            ]
        if service != "gateway":
            return [*server, "--tls-client-ca", str(d / "ca.crt")]
        return [
            *server,
            *(a for part, value in client.items() for a in (f"--backend-tls-{part}", str(value))),
        ]

    def spool(self, replica: str, kind: str) -> Path:
        """Each replica its own spool file (a spool is locked by the process that holds it)."""
        return self.log_dir.parent / "spool" / f"{replica}.{kind}.jsonl"

    def command(self, replica: str) -> list[str]:
        service = replica.split(".")[0]
        args = [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            service,
            "--host",
            self.host,
            "--port",
            str(self.ports[replica]),
            "--artifacts-dir",
            str(self.artifacts_dir),
        ]
        if service == "features":
            if self.redis_url:
                args += ["--redis-url", self.redis_url, "--spool", str(self.spool(replica, "events"))]
            if self.event_log:
                args += ["--event-log", str(self.event_log)]
        if service == "retrieval":
            args += ["--features-addr", self.target("features")]
        if service == "gateway":
            for backend in BACKENDS:
                args += [f"--{backend}-addr", self.target(backend)]
            args += ["--exposure-spool", str(self.spool(replica, "exposures"))]
        return args + self._tls_args(service) + self.extra_args.get(service, [])

    def start_service(self, service: str) -> None:
        """Start every replica of `service`."""
        for replica in self.replica_names(service):
            self.start_replica(replica)

    def start_replica(self, replica: str, more_args: list[str] | None = None) -> None:
        """Start one replica ("ranking.1"), with `more_args` after the service's extra flags."""
        service = replica.split(".")[0]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{replica}.log").open("ab")
        self.processes[replica] = subprocess.Popen(
            self.command(replica) + (more_args or []),
            stdout=log,
            stderr=log,
            env={
                **os.environ,
                "OTEL_SERVICE_NAME": f"recsys-{service}",
                # Traces then tell which replica served each call.
                "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={replica}",
                **self.env,
            },
        )
        log.close()

    def kill_replica(self, replica: str) -> None:
        """SIGKILL one replica (a crash: no graceful shutdown, nothing flushed)."""
        proc = self.processes.pop(replica)
        proc.kill()
        proc.wait()

    def wait_serving(self, service: str, timeout_s: float = 120.0) -> None:
        """Wait until every replica of `service` reports SERVING."""
        deadline = time.monotonic() + timeout_s
        tls = self.client_tls()
        for replica in self.replica_names(service):
            while health_status(self.address(replica), tls=tls) != health_pb2.HealthCheckResponse.SERVING:
                proc = self.processes.get(replica)
                if proc is not None and proc.poll() is not None:
                    raise ServiceFailed(
                        f"{replica} exited with code {proc.returncode}:\n{self.log_tail(replica)}"
                    )
                if time.monotonic() > deadline:
                    raise ServiceFailed(
                        f"{replica} not SERVING after {timeout_s:.0f}s:\n{self.log_tail(replica)}"
                    )
                time.sleep(0.1)

    def wait_logged(self, service: str, text: str, timeout_s: float = 30.0) -> None:
        """Wait until `text` appears in the log of `service` (a replica name or a service)."""
        path = self.log_dir / f"{service}.log"
        deadline = time.monotonic() + timeout_s
        while not (path.exists() and text in path.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{text!r} not in {service}'s log after {timeout_s:.0f}s:\n{self.log_tail(service)}"
                )
            time.sleep(0.1)

    def log_tail(self, service: str, lines: int = 15) -> str:
        path = self.log_dir / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self, timeout_s: float = 120.0) -> LocalPlatform:
        try:
            for service in SERVICES:
                self.start_service(service)
            for service in SERVICES:
                self.wait_serving(service, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_service(self, service: str, timeout_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every replica of `service` (graceful), SIGKILL after `timeout_s`; their exit codes."""
        codes: dict[str, int | None] = {}
        stopping = [(r, self.processes.pop(r)) for r in self.replica_names(service) if r in self.processes]
        for _, proc in stopping:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for replica, proc in stopping:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            codes[replica] = proc.returncode
        return codes

    def stop(self) -> dict[str, int | None]:
        """Stop everything (the gateway first, so no request reaches a backend that is going away)."""
        codes: dict[str, int | None] = {}
        for service in reversed(SERVICES):
            codes |= self.stop_service(service)
        return codes

    def __enter__(self) -> LocalPlatform:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
