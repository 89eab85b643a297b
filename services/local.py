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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BACKENDS = ("features", "retrieval", "ranking")
SERVICES = (*BACKENDS, "gateway")
DEFAULT_PORTS = {"gateway": 50051, "features": 50052, "retrieval": 50053, "ranking": 50054}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def health_status(address: str, service: str = "", timeout_s: float = 1.0) -> int:
    """The grpc.health.v1 status at `address` (UNKNOWN when it does not answer)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
        return int(reply.status)


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
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def on_free_ports(cls, artifacts_dir: Path, log_dir: Path, **kwargs: object) -> LocalPlatform:
        return cls(artifacts_dir, log_dir, ports={s: free_port() for s in SERVICES}, **kwargs)  # type: ignore[arg-type]

    def address(self, service: str) -> str:
        return f"{self.host}:{self.ports[service]}"

    def command(self, service: str) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            service,
            "--host",
            self.host,
            "--port",
            str(self.ports[service]),
            "--artifacts-dir",
            str(self.artifacts_dir),
        ]
        if service == "features":
            if self.redis_url:
                args += ["--redis-url", self.redis_url]
            if self.event_log:
                args += ["--event-log", str(self.event_log)]
        if service == "gateway":
            for backend in BACKENDS:
                args += [f"--{backend}-addr", self.address(backend)]
        return args + self.extra_args.get(service, [])

    def start_service(self, service: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{service}.log").open("ab")
        self.processes[service] = subprocess.Popen(
            self.command(service),
            stdout=log,
            stderr=log,
            env={**os.environ, "OTEL_SERVICE_NAME": f"recsys-{service}", **self.env},
        )
        log.close()

    def wait_serving(self, service: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while health_status(self.address(service)) != health_pb2.HealthCheckResponse.SERVING:
            proc = self.processes.get(service)
            if proc is not None and proc.poll() is not None:
                raise ServiceFailed(
                    f"{service} exited with code {proc.returncode}:\n{self.log_tail(service)}"
                )
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{service} not SERVING after {timeout_s:.0f}s:\n{self.log_tail(service)}"
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

    def stop_service(self, service: str, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after `timeout_s`; returns the exit code."""
        proc = self.processes.pop(service, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop(self) -> dict[str, int | None]:
        # The gateway first, so no request reaches a backend that is going away.
        return {s: self.stop_service(s) for s in reversed(SERVICES) if s in self.processes}

    def __enter__(self) -> LocalPlatform:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
