"""Chaos under open-loop load, counted: Recommend and Feedback at fixed rates while a replica of each
backend is SIGKILLed (ranking coming back slowed by 150 ms), Redis (append-only, fsync always) is
SIGKILLed and restarted, a features replica holding a spool is killed and (after a start refused while
Redis is down, as a crash-looping pod) restarted, and a corrupt version is published as CURRENT.

Reports answered / failed / degraded Recommend, accepted / refused Feedback, and what the log read back
holds: every accepted feedback event and every exposure, each once. tests/integration/test_chaos.py
runs the same scenario, shorter, and asserts the counts.

    .venv/bin/python bench/chaos.py [--artifacts-dir artifacts] [--seconds 40] [--rps 30] [--feedback-rps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.client import Client, event  # noqa: E402
from services.common.artifacts import open_current, set_current  # noqa: E402
from services.features.redis_store import RedisConfig, RedisStore  # noqa: E402
from services.features.store import Event, EventType  # noqa: E402
from services.local import LocalPlatform, free_port  # noqa: E402
from tests.support import start_redis  # noqa: E402

#: Seconds into the load at which each fault starts (the load must last longer than the last).
FAULTS_END_S = 18.0


@dataclass
class ChaosReport:
    recommend_sent: int = 0
    recommend_answered: int = 0
    recommend_degraded: int = 0
    recommend_failed: int = 0
    feedback_sent: int = 0
    feedback_accepted: int = 0
    feedback_refused: int = 0
    feedback_logged: int = 0
    feedback_duplicated: int = 0
    exposures_expected: int = 0
    exposures_logged: int = 0
    exposures_duplicated: int = 0
    versions_served: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: The features replica restarted while Redis was down: its exit code and last log lines.
    refused_start: tuple[int | None, str] = (None, "")

    @property
    def feedback_lost(self) -> int:
        return self.feedback_accepted - self.feedback_logged

    @property
    def exposures_lost(self) -> int:
        return self.exposures_expected - self.exposures_logged


def open_loop(rps: float, duration_s: float, call: Callable[[int], None]) -> None:
    """Start call(i) at fixed times whatever the latency (no coordinated omission), then wait for all."""
    futures: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=32) as pool:
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


def run_chaos(version: Path, work: Path, seconds: float, rps: float, feedback_rps: float) -> ChaosReport:
    """The scenario on a copy of artifact version `version` (its CURRENT is corrupted on purpose)."""
    if seconds < FAULTS_END_S + 2:
        raise ValueError(f"--seconds: at least {FAULTS_END_S + 2:g} (the faults take {FAULTS_END_S:g} s)")
    root = work / "artifacts"
    shutil.copytree(version, root / "v1")
    set_current(root, "v1")
    redis_port, redis_dir = free_port(), work / "redis"
    url = f"redis://127.0.0.1:{redis_port}/0"
    redis = start_redis(redis_dir, redis_port, durable=True)
    platform = LocalPlatform.on_free_ports(
        root,
        work / "logs",
        redis_url=url,
        replicas={"features": 2, "retrieval": 2, "ranking": 2},
        extra_args={s: ["--reload-interval-s", "0.5"] for s in ("features", "retrieval", "ranking")},
    )
    report = ChaosReport()
    lock = threading.Lock()
    accepted: list[str] = []
    versions: Counter[str] = Counter()
    try:
        platform.start()
        with Client(platform.address("gateway"), timeout_s=5) as client:

            def recommend(i: int) -> None:
                try:
                    reply = client.recommend(str(1 + i % 200), k=10)
                except grpc.RpcError as e:
                    with lock:
                        report.recommend_failed += 1
                        report.failures.append(f"Recommend {i}: {e.code().name} {e.details()}")
                    return
                with lock:
                    report.recommend_answered += 1
                    report.recommend_degraded += reply.degraded
                    report.exposures_expected += len(reply.assignments)
                    versions[reply.artifact_version] += 1

            def feedback(i: int) -> None:
                e = event(str(1 + i % 200), str(1 + i % 500), "click", event_id=f"chaos-{i}")
                try:
                    client.feedback([e])
                except grpc.RpcError as err:
                    with lock:
                        report.feedback_refused += 1
                        report.failures.append(f"Feedback {i}: {err.code().name} {err.details()}")
                    return
                with lock:
                    accepted.append(e.event_id)

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
                platform.start_replica("features.1")  # refused while Redis is down ...
                crashed = platform.processes["features.1"]
                crashed.wait(timeout=30)
                report.refused_start = (crashed.returncode, platform.log_tail("features.1", 3))
                time.sleep(0.5)
                redis = start_redis(redis_dir, redis_port, durable=True)  # the AOF brings the log back
                platform.start_replica("features.1")  # ... and this start drains its spool
                time.sleep(3)
                bad = root / "v2-corrupt"
                shutil.copytree(root / "v1", bad)
                with (bad / "ranker_0.txt").open("a") as f:
                    f.write("tampered\n")
                set_current(root, "v2-corrupt")

            threads = [
                threading.Thread(target=faults),
                threading.Thread(target=open_loop, args=(rps, seconds, recommend)),
                threading.Thread(target=open_loop, args=(feedback_rps, seconds, feedback)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        # Every spool drains once Redis is back: wait until the log holds what was accepted.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logged = read_log(url)
            fed = {e.event_id for e in logged if e.event_id.startswith("chaos-")}
            shown = {e.event_id for e in logged if e.type is EventType.EXPOSURE}
            if len(fed) >= len(accepted) and len(shown) >= report.exposures_expected:
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
    report.recommend_sent = int(rps * seconds)
    report.feedback_sent = int(feedback_rps * seconds)
    report.feedback_accepted = len(accepted)
    report.feedback_logged = len(set(feedback_ids) & set(accepted))
    report.feedback_duplicated = len(feedback_ids) - len(set(feedback_ids))
    report.exposures_logged = len(set(exposures))
    report.exposures_duplicated = len(exposures) - len(set(exposures))
    report.versions_served = sorted(versions)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"), help="a root with CURRENT")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rps", type=float, default=30.0, help="Recommend per second (open loop)")
    parser.add_argument("--feedback-rps", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = parser.parse_args()
    version = open_current(args.artifacts_dir).path
    with tempfile.TemporaryDirectory() as work:
        report = run_chaos(version, Path(work), args.seconds, args.rps, args.feedback_rps)
    result = {
        **asdict(report),
        "feedback_lost": report.feedback_lost,
        "exposures_lost": report.exposures_lost,
        "config": {"seconds": args.seconds, "rps": args.rps, "feedback_rps": args.feedback_rps},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    r = report
    print(f"chaos for {args.seconds:g} s: Recommend {args.rps:g}/s, Feedback {args.feedback_rps:g}/s")
    print(
        f"{'':>10} {'sent':>6} {'answered':>9} {'failed':>7} {'degraded':>9} {'logged':>7} {'lost':>5} {'dup':>4}"
    )
    print(
        f"{'Recommend':>10} {r.recommend_sent:>6} {r.recommend_answered:>9} {r.recommend_failed:>7} "
        f"{r.recommend_degraded:>9} {'':>7} {'':>5} {'':>4}"
    )
    print(
        f"{'Feedback':>10} {r.feedback_sent:>6} {r.feedback_accepted:>9} {r.feedback_refused:>7} {'':>9} "
        f"{r.feedback_logged:>7} {r.feedback_lost:>5} {r.feedback_duplicated:>4}"
    )
    print(
        f"{'Exposures':>10} {r.exposures_expected:>6} {'':>9} {'':>7} {'':>9} "
        f"{r.exposures_logged:>7} {r.exposures_lost:>5} {r.exposures_duplicated:>4}"
    )
    print(f"versions served: {', '.join(r.versions_served)} (the corrupt one refused); written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
