"""`recsys bench load`: a bounded load generator for the gateway, loopback only.

Closed loop: `concurrency` workers each send the next request as soon as the previous one returns.
Open loop: requests start at a fixed rate whatever the latency; each latency is measured from the
request's scheduled start, so a stalled server shows up in the tail (no coordinated omission).
Both stop at `duration_s` or `max_requests`, whichever comes first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import uvloop

from recsys.v1 import gateway_pb2, gateway_pb2_grpc
from services.client import auth_metadata
from services.common.tls import ClientTLS, aio_channel

MAX_DURATION_S = 600.0
MAX_REQUESTS = 1_000_000


class LoadError(ValueError):
    """Bad load-generator settings; the message names the setting."""


@dataclass(frozen=True)
class LoadConfig:
    #: host:port, or several separated by commas (gateway replicas, balanced round robin).
    gateway: str
    users: Sequence[str]
    mode: str = "closed"  # closed | open
    concurrency: int = 1
    rps: float = 100.0
    duration_s: float = 10.0
    max_requests: int = 10_000
    k: int = 10
    timeout_s: float = 1.0
    #: sent as `authorization: Bearer <key>` (services.client.auth_metadata)
    api_key: str | None = field(default=None, repr=False)
    #: a gateway serving TLS
    tls: ClientTLS | None = None

    def validate(self) -> None:
        if self.mode not in ("closed", "open"):
            raise LoadError(f"mode: expected closed or open, got {self.mode!r}")
        if not 1 <= self.concurrency <= 1024:
            raise LoadError(f"concurrency: must be in 1..1024, got {self.concurrency}")
        if not 0 < self.rps <= 100_000:
            raise LoadError(f"rps: must be in (0, 100000], got {self.rps}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise LoadError(f"duration: must be in (0, {MAX_DURATION_S:.0f}] seconds, got {self.duration_s}")
        if not 1 <= self.max_requests <= MAX_REQUESTS:
            raise LoadError(f"max-requests: must be in 1..{MAX_REQUESTS}, got {self.max_requests}")
        if not self.users:
            raise LoadError("users: at least one user id is needed")
        require_loopback(self.gateway)


def require_loopback(gateway: str) -> None:
    """Refuse any target that does not resolve to loopback only: this tool never loads another host."""
    for address in gateway.split(","):
        _require_loopback(address.strip())


def _require_loopback(address: str) -> None:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise LoadError(f"gateway: cannot resolve {host!r} ({e})") from e
    for ip in resolved:
        if not ipaddress.ip_address(ip.split("%")[0]).is_loopback:
            raise LoadError(
                f"gateway: {address} resolves to {ip}, not loopback; load runs only on this machine"
            )


@dataclass
class LoadResult:
    mode: str
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    elapsed_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: of the requests answered OK only (a shed request's fast refusal is not a fast answer)
    ok_latency_ms: dict[str, float] = field(default_factory=dict)
    #: of the requests refused RESOURCE_EXHAUSTED (shed): how soon a client is told to back off
    shed_latency_ms: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return self.requests - sum(self.errors.values())

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "throughput_rps": self.throughput_rps}


def summarize(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {}
    ordered = sorted(latencies_ms)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {"p50": q(50), "p95": q(95), "p99": q(99), "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


async def _run(config: LoadConfig) -> LoadResult:
    latencies: list[float] = []
    ok_latencies: list[float] = []
    shed_latencies: list[float] = []
    errors: Counter[str] = Counter()
    degraded = 0
    sent = 0
    # Several gateway replicas ("a:1,b:2"): one channel balancing over them.
    target = config.gateway if "," not in config.gateway else "ipv4:" + config.gateway.replace(" ", "")
    options = [("grpc.lb_policy_name", "round_robin")]
    async with aio_channel(target, config.tls, options) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = auth_metadata(config.api_key)

        async def one(i: int, scheduled: float) -> None:
            nonlocal degraded
            request = gateway_pb2.RecommendRequest(user_id=config.users[i % len(config.users)], k=config.k)
            code = "OK"
            try:
                response = await stub.Recommend(request, timeout=config.timeout_s, metadata=metadata)
                degraded += response.degraded
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                errors[code] += 1
            latency = (time.perf_counter() - scheduled) * 1000
            latencies.append(latency)
            if code == "OK":
                ok_latencies.append(latency)
            elif code == "RESOURCE_EXHAUSTED":
                shed_latencies.append(latency)

        start = time.perf_counter()
        deadline = start + config.duration_s
        if config.mode == "closed":

            async def worker() -> None:
                nonlocal sent
                while sent < config.max_requests and time.perf_counter() < deadline:
                    sent += 1
                    await one(sent, time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        else:
            interval = 1.0 / config.rps
            tasks: set[asyncio.Task[None]] = set()
            while sent < config.max_requests:
                scheduled = start + sent * interval
                if scheduled >= deadline:
                    break
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                task = asyncio.create_task(one(sent, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return LoadResult(
        mode=config.mode,
        requests=len(latencies),
        errors=dict(errors),
        degraded=degraded,
        elapsed_s=elapsed,
        latency_ms=summarize(latencies),
        ok_latency_ms=summarize(ok_latencies),
        shed_latency_ms=summarize(shed_latencies),
        # never the key in a result file
        config={k: v for k, v in asdict(config).items() if k not in ("users", "api_key", "tls")}
        | {"users": len(config.users), "tls": config.tls is not None},
    )


def run(config: LoadConfig) -> LoadResult:
    config.validate()
    return uvloop.run(_run(config))  # the load generator's own CPU competes with the services'


def format_result(result: LoadResult) -> str:
    lat = result.latency_ms
    errors = sum(result.errors.values())
    return "\n".join(
        [
            f"{result.mode} loop: {result.requests} requests in {result.elapsed_s:.1f} s = {result.throughput_rps:.0f} req/s",
            "latency ms: " + "  ".join(f"{k}={lat[k]:.2f}" for k in ("p50", "p95", "p99", "max") if k in lat),
            f"errors: {errors} {result.errors or ''}  degraded: {result.degraded} "
            f"({result.degraded / max(1, result.requests):.1%})",
        ]
    )
