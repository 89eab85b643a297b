"""Latency and throughput at scale: a synthetic 1M-item catalogue (`recsys synth`: every source of the
default pipeline, item-item tables included), the pipeline's fused candidates per request (100 by
default; `--candidates` for a generated catalogue), a ranker of 300 trees, the four services as separate
processes on loopback.

Measures, in one run:
  1. end-to-end latency at 1 request in flight (closed loop, sequential);
  2. throughput: open-loop rates, the highest with p99 <= 50 ms and zero errors;
  3. platform overhead: end-to-end p50 minus the p50 of the same stages' compute called in-process
     (the same servicers, same artifacts, no processes, no network, no serialization);
  4. CPU milliseconds per request of each process (and of the load generator) during the sequential
     run, from /proc: their sum bounds the throughput of this machine at cores * 1000 / sum req/s.

    .venv/bin/python bench/latency_1m.py                      # generates artifacts-1m/ first if missing
    .venv/bin/python bench/latency_1m.py --redis-url redis://127.0.0.1:6379/0 --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procfs import cpu_seconds, rss_mib  # noqa: E402
from bench.served import wait_compiled  # noqa: E402
from services.common.artifacts import open_current  # noqa: E402
from services.common.fusion import FusionParams  # noqa: E402
from services.loadgen import LoadConfig, LoadResult, run  # noqa: E402
from services.local import BACKENDS, LocalPlatform  # noqa: E402


def ensure_artifacts(root: Path, items: int, candidates: int) -> None:
    if (root / "CURRENT").exists():
        return
    from services.trainer.synthetic import SyntheticConfig, generate

    generate(SyntheticConfig(out=root, items=items, candidates=candidates))


def cpu_snapshot(platform: LocalPlatform) -> dict[str, float]:
    """CPU seconds of every service process and of this process (the load generator)."""
    out = {name: cpu_seconds(proc.pid) for name, proc in platform.processes.items()}
    out["load generator"] = time.process_time()
    return out


def in_process_stage_ms(root: Path, users: list[str], requests: int) -> dict[str, float]:
    """p50 of each stage's compute: the same handlers called directly, as the gateway would call them,
    with the ranker's compiled trees (what the processes score with once compiled)."""
    from services.ranking.trees import default_cache_dir
    from services.served_quality import handlers

    async def measure() -> dict[str, list[float]]:
        async with handlers(root) as h:
            model = h.ranking.versions.current
            for scorer in model.scorers:
                await asyncio.to_thread(scorer.compile, default_cache_dir())
            times: dict[str, list[float]] = {"features": [], "retrieval": [], "ranking": []}
            for i in range(requests):
                t0 = time.perf_counter()
                user = await h.user(users[i % len(users)])
                t1 = time.perf_counter()
                found = await h.retrieve(user, 10)
                t2 = time.perf_counter()
                await h.rank(user, found, 10)
                t3 = time.perf_counter()
                for stage, ms in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    times[stage].append(ms * 1000)
            return times

    return {stage: statistics.median(v) for stage, v in asyncio.run(measure()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts-1m"))
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--replicas", type=int, default=1, help="processes per backend service")
    parser.add_argument("--sequential", type=int, default=1000, help="requests at 1 in flight")
    parser.add_argument("--rates", default="50,75,100,150,200,400", help="open-loop rates to try (req/s)")
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument(
        "--candidates",
        type=int,
        default=FusionParams().candidates,
        help="fused candidates per request of a generated catalogue (default: the pipeline's)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency_1m.json"))
    args = parser.parse_args()

    ensure_artifacts(args.artifacts_dir, args.items, args.candidates)
    version = open_current(args.artifacts_dir)
    users = json.loads(version.file("user_ids.json").read_text())[:2000]
    candidates = int(version.manifest["pipeline"]["fusion"]["candidates"])
    result: dict[str, Any] = {
        "benchmark": "latency_1m",
        "items": args.items,
        "candidates": candidates,
        "store": "redis" if args.redis_url else "embedded",
        "replicas": args.replicas,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as work:
        platform = LocalPlatform.on_free_ports(
            args.artifacts_dir,
            Path(work) / "logs",
            redis_url=args.redis_url,
            event_log=Path(work) / "events.jsonl",
            replicas={b: args.replicas for b in BACKENDS},
        )
        with platform:
            wait_compiled(platform)
            gateway = platform.address("gateway")
            run(LoadConfig(gateway, users, max_requests=200, duration_s=60))  # warm-up
            before = cpu_snapshot(platform)
            sequential = run(LoadConfig(gateway, users, max_requests=args.sequential, duration_s=300))
            after = cpu_snapshot(platform)
            result["sequential"] = sequential.to_json()
            cpu_ms = {k: (after[k] - before[k]) * 1000 / sequential.requests for k in before}
            result["cpu_ms_per_request"] = cpu_ms
            result["cpu_bound_rps"] = (os.cpu_count() or 1) * 1000 / sum(cpu_ms.values())
            result["rss_mib"] = {name: rss_mib(proc.pid) for name, proc in platform.processes.items()}
            rates: list[LoadResult] = []
            for rate in [float(r) for r in args.rates.split(",")]:
                rates.append(
                    run(LoadConfig(gateway, users, mode="open", rps=rate, duration_s=args.rate_seconds))
                )
            result["open_loop"] = [r.to_json() for r in rates]
    ok = [r for r in rates if not r.errors and r.latency_ms.get("p99", 1e9) <= 50]
    result["max_rps_p99_le_50ms"] = max((r.throughput_rps for r in ok), default=0.0)
    stages = in_process_stage_ms(args.artifacts_dir, users, 300)
    result["in_process_stage_p50_ms"] = stages
    result["overhead_p50_ms"] = sequential.latency_ms["p50"] - sum(stages.values())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lat = sequential.latency_ms
    print(
        f"1M items, {candidates} candidates, {result['store']} store, {args.replicas} process(es) per backend"
    )
    print(
        f"1 in flight ({sequential.requests} req): p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f} ms"
    )
    print(f"{'rate':>8}{'achieved':>10}{'p50':>8}{'p99':>8}{'errors':>8}{'degraded':>10}")
    for r in rates:
        print(
            f"{r.config['rps']:>8.0f}{r.throughput_rps:>10.1f}{r.latency_ms['p50']:>8.2f}{r.latency_ms['p99']:>8.2f}"
            f"{sum(r.errors.values()):>8}{r.degraded / max(1, r.requests):>10.1%}"
        )
    print(f"max req/s with p99 <= 50 ms and no errors: {result['max_rps_p99_le_50ms']:.0f}")
    print(
        "CPU ms per request: "
        + "  ".join(f"{k}={v:.2f}" for k, v in result["cpu_ms_per_request"].items())
        + f"  (sum {sum(result['cpu_ms_per_request'].values()):.2f}: at most "
        f"{result['cpu_bound_rps']:.0f} req/s on {os.cpu_count()} cores)"
    )
    print("resident memory MiB: " + "  ".join(f"{k}={v:.0f}" for k, v in result["rss_mib"].items()))
    print("in-process stage p50 ms: " + "  ".join(f"{k}={v:.2f}" for k, v in stages.items()))
    print(f"platform overhead at p50: {result['overhead_p50_ms']:.2f} ms   (wrote {args.out})")


if __name__ == "__main__":
    main()
