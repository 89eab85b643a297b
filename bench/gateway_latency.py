"""Gateway latency in the demo setup: the four services as processes on loopback (embedded store, or
Redis with --redis-url), N sequential Recommend calls; client-side total and the gateway's per-stage
times at p50/p99. Writes JSON and prints a table.

    ./run recsys train                      # once, if artifacts/ has no CURRENT
    .venv/bin/python bench/gateway_latency.py --requests 200 [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import tempfile
import time
from pathlib import Path

from services.client import Client
from services.demo import COLD_USER, demo_users, format_latency, measure_latency
from services.local import LocalPlatform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gateway_latency.json"))
    args = parser.parse_args()

    users = [*demo_users(args.artifacts_dir, args.users), COLD_USER]
    with tempfile.TemporaryDirectory() as work:
        platform = LocalPlatform.on_free_ports(
            args.artifacts_dir,
            Path(work) / "logs",
            redis_url=args.redis_url,
            event_log=Path(work) / "events.jsonl",
        )
        with platform, Client(platform.address("gateway")) as client:
            measure_latency(client, users, args.warmup)
            result = measure_latency(client, users, args.requests)
    result.update(
        {
            "benchmark": "gateway_latency",
            "store": "redis" if args.redis_url else "embedded",
            "artifacts_version": (args.artifacts_dir / "CURRENT").read_text().strip(),
            "machine": {"cpus": os.cpu_count(), "python": host.python_version()},
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Gateway latency, {result['store']} store, {args.requests} sequential requests:")
    print(format_latency(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
