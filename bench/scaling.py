"""Throughput with 1 and with 2 processes per service (the load generator balances over the gateways,
each gateway over the backend replicas, gRPC round_robin):
closed loop at fixed concurrency, same users, same duration. Writes JSON and prints a table.

    .venv/bin/python bench/scaling.py [--artifacts-dir artifacts] [--concurrency 8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from services.demo import demo_users
from services.loadgen import LoadConfig, run
from services.local import SERVICES, LocalPlatform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scaling.json"))
    args = parser.parse_args()

    users = demo_users(args.artifacts_dir, 200)
    rows = []
    for replicas in (1, 2):
        with tempfile.TemporaryDirectory() as work:
            platform = LocalPlatform.on_free_ports(
                args.artifacts_dir,
                Path(work) / "logs",
                event_log=Path(work) / "events.jsonl",
                replicas={s: replicas for s in SERVICES},
            )
            with platform:
                gateway = ",".join(platform.address(r) for r in platform.replica_names("gateway"))
                run(LoadConfig(gateway, users, max_requests=100, duration_s=30))  # warm-up
                result = run(
                    LoadConfig(
                        gateway,
                        users,
                        concurrency=args.concurrency,
                        duration_s=args.seconds,
                        max_requests=10**6,
                    )
                )
        rows.append({"replicas": replicas, **result.to_json()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"closed loop, concurrency {args.concurrency}, {args.seconds:.0f} s")
    print(f"{'processes/service':>18}{'req/s':>8}{'p50':>8}{'p99':>8}{'errors':>8}{'degraded':>10}")
    for r in rows:
        lat = r["latency_ms"]
        print(
            f"{r['replicas']:>18}{r['throughput_rps']:>8.1f}{lat['p50']:>8.2f}{lat['p99']:>8.2f}"
            f"{sum(r['errors'].values()):>8}{r['degraded'] / max(1, r['requests']):>10.1%}"
        )


if __name__ == "__main__":
    main()
