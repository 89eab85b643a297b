"""Chaos under open-loop load: a replica of each backend SIGKILLed (ranking coming back slowed), Redis
SIGKILLed and restarted (with a features replica killed holding a spool, restarted once Redis is back,
as a crash-looping pod would be), a corrupt version published as CURRENT. Every valid Recommend is answered,
no Feedback is refused, and the log read back holds every accepted event once: feedback and exposures.

Bounded: about 25 s of load on loopback, two replicas per backend, one gateway."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from recsys.v1 import gateway_pb2
from services.client import Client, event
from services.common.artifacts import ArtifactVersion, set_current
from services.features.redis_store import RedisConfig, RedisStore
from services.features.store import Event, EventType
from services.local import LocalPlatform, free_port
from tests.support import start_redis

pytestmark = pytest.mark.timeout(600)

LOAD_S = 25.0
RECOMMEND_RPS = 12.0
FEEDBACK_RPS = 6.0


@dataclass
class Outcomes:
    recommend_ok: int = 0
    recommend_degraded: int = 0
    versions: set[str] = field(default_factory=set)
    exposures_expected: int = 0
    feedback_accepted: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def open_loop(rps: float, duration_s: float, call: Callable[[int], None]) -> None:
    """Start call(i) at fixed times whatever the latency (no coordinated omission), then wait for all."""
    futures: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        start = time.monotonic()
        for i in range(int(rps * duration_s)):
            time.sleep(max(0.0, start + i / rps - time.monotonic()))
            futures.append(pool.submit(call, i))
    for f in futures:
        f.result()


def read_log(url: str) -> list[Event]:
    async def main() -> list[Event]:
        store = RedisStore(RedisConfig(url=url))
        try:
            return await store.read_events()
        finally:
            await store.close()

    return asyncio.run(main())


def test_chaos_under_load_loses_and_refuses_nothing(trained: ArtifactVersion, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(trained.path, root / "v1")
    set_current(root, "v1")
    redis_port, redis_dir = free_port(), tmp_path / "redis"
    url = f"redis://127.0.0.1:{redis_port}/0"
    redis = start_redis(redis_dir, redis_port, durable=True)
    platform = LocalPlatform.on_free_ports(
        root,
        tmp_path / "logs",
        redis_url=url,
        replicas={"features": 2, "retrieval": 2, "ranking": 2},
        extra_args={s: ["--reload-interval-s", "0.5"] for s in ("features", "retrieval", "ranking")},
    )
    outcomes = Outcomes()
    exits: list[tuple[int | None, str]] = []
    try:
        platform.start()
        with Client(platform.address("gateway"), timeout_s=5) as client:

            def recommend(i: int) -> None:
                try:
                    reply: gateway_pb2.RecommendResponse = client.recommend(str(1 + i % 200), k=10)
                except grpc.RpcError as e:
                    with outcomes.lock:
                        outcomes.failures.append(f"Recommend {i}: {e.code().name} {e.details()}")
                    return
                with outcomes.lock:
                    outcomes.recommend_ok += 1
                    outcomes.recommend_degraded += reply.degraded
                    outcomes.versions.add(reply.artifact_version)
                    outcomes.exposures_expected += len(reply.assignments)

            def feedback(i: int) -> None:
                e = event(str(1 + i % 200), str(1 + i % 500), "click", event_id=f"chaos-{i}")
                try:
                    client.feedback([e])
                except grpc.RpcError as err:
                    with outcomes.lock:
                        outcomes.failures.append(f"Feedback {i}: {err.code().name} {err.details()}")
                    return
                with outcomes.lock:
                    outcomes.feedback_accepted.append(e.event_id)

            def faults() -> None:
                nonlocal redis
                time.sleep(3)
                platform.kill_replica("ranking.1")
                platform.start_replica("ranking.1", ["--inject-delay-ms", "150"])  # back, but slow
                time.sleep(3)
                platform.kill_replica("retrieval.1")
                platform.start_replica("retrieval.1")
                time.sleep(3)
                redis.kill()  # SIGKILL: features spools what it accepts from here
                redis.wait()
                time.sleep(1.5)
                platform.kill_replica("features.1")  # with events in its spool
                # Restarted while Redis is down it refuses to start (as a pod would crash-loop); its spool
                # waits on disk for the restart that works.
                platform.start_replica("features.1")
                crashed = platform.processes["features.1"]
                crashed.wait(timeout=30)
                exits.append((crashed.returncode, platform.log_tail("features.1", 3)))
                time.sleep(0.5)
                redis = start_redis(redis_dir, redis_port, durable=True)  # the AOF brings the log back
                platform.start_replica("features.1")
                time.sleep(3)
                bad = root / "v2-corrupt"
                shutil.copytree(root / "v1", bad)
                with (bad / "ranker_0.txt").open("a") as f:
                    f.write("tampered\n")
                set_current(root, "v2-corrupt")

            chaos = threading.Thread(target=faults)
            chaos.start()
            load = [
                threading.Thread(target=open_loop, args=(RECOMMEND_RPS, LOAD_S, recommend)),
                threading.Thread(target=open_loop, args=(FEEDBACK_RPS, LOAD_S, feedback)),
            ]
            for t in load:
                t.start()
            for t in [chaos, *load]:
                t.join()

        # Every spool drains once Redis is back: wait until the log holds what was accepted.
        deadline = time.monotonic() + 60
        while True:
            logged = read_log(url)
            feedback_ids = [e.event_id for e in logged if e.event_id.startswith("chaos-")]
            exposures = [e.event_id for e in logged if e.type is EventType.EXPOSURE]
            if (
                len(set(feedback_ids)) >= len(outcomes.feedback_accepted)
                and len(set(exposures)) >= outcomes.exposures_expected
            ) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a batch delivered twice would land by now
        logged = read_log(url)
    finally:
        platform.stop()
        redis.kill()
        redis.wait()

    feedback_ids = [e.event_id for e in logged if e.event_id.startswith("chaos-")]
    exposures = [e.event_id for e in logged if e.type is EventType.EXPOSURE]
    print(
        f"chaos: {outcomes.recommend_ok} Recommend answered ({outcomes.recommend_degraded} degraded), "
        f"{len(outcomes.feedback_accepted)} Feedback accepted, {len(outcomes.failures)} failed; "
        f"log: {len(feedback_ids)} feedback, {len(exposures)} exposures of {outcomes.exposures_expected}"
    )
    ((code, tail),) = exits
    assert code != 0 and "cannot reach Redis" in tail, tail
    assert outcomes.failures == []
    assert outcomes.recommend_ok == int(RECOMMEND_RPS * LOAD_S)
    assert outcomes.versions == {"v1"}, "the corrupt version was served"
    assert len(outcomes.feedback_accepted) == int(FEEDBACK_RPS * LOAD_S)
    assert sorted(feedback_ids) == sorted(outcomes.feedback_accepted), "feedback lost or duplicated"
    assert len(exposures) == len(set(exposures)) == outcomes.exposures_expected, (
        "exposures lost or duplicated"
    )
