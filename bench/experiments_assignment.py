"""Cost of experiment assignment per request: the 64-bit hash, one bucket, and `assign` for the
default file and for a busy config (holdout + 6 experiments in 3 layers). Writes JSON, prints a table.

    .venv/bin/python bench/experiments_assignment.py [--users 100000]
"""

from __future__ import annotations

import argparse
import json
import platform as host
import time
from collections.abc import Callable
from pathlib import Path

from services.gateway import experiments as ex

BUSY = {
    "holdout": {"salt": "holdout", "fraction": 0.05},
    "experiments": [
        {
            "id": f"e{i}",
            "layer": f"L{i % 3}",
            "salt": f"s{i}",
            "traffic": 0.5,
            "arms": [{"name": "control", "weight": 50}, {"name": "t", "weight": 50}],
        }
        for i in range(6)
    ],
}


def per_call_us(fn: Callable[[str], object], users: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for u in users:
            fn(u)
        best = min(best, (time.perf_counter() - start) / len(users))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/experiments_assignment.json"))
    args = parser.parse_args()
    users = [f"user-{i}" for i in range(args.users)]
    default = ex.load(ex.DEFAULT_FILE)
    busy = ex.parse(BUSY, "busy")
    results = {
        "hash64": per_call_us(lambda u: ex.hash64("salt", u), users),
        "bucket": per_call_us(lambda u: ex.bucket("salt", u), users),
        "assign_default_file_1_experiment": per_call_us(lambda u: ex.assign(default, u), users),
        "assign_holdout_6_experiments_3_layers": per_call_us(lambda u: ex.assign(busy, u), users),
        "assign_and_settings_busy": per_call_us(lambda u: ex.settings_for(ex.assign(busy, u), 500), users),
    }
    out = {
        "users": args.users,
        "us_per_call": {k: round(v, 3) for k, v in results.items()},
        "python": host.python_version(),
        "machine": host.machine(),
        "cpus": __import__("os").cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'operation':<42}{'µs/call':>10}")
    for name, us in results.items():
        print(f"{name:<42}{us:>10.2f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
