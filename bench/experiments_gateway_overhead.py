"""Gateway overhead of experiments: the same platform, the experiments file switched (hot reload)
between OFF (no experiments) and ON (holdout + 3 experiments in 3 layers, one arm on a pinned version
when --version is given; exposures logged), alternating blocks of sequential Recommend calls.
Writes JSON, prints a table.

    .venv/bin/python bench/experiments_gateway_overhead.py --requests 400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from services.client import Client
from services.demo import demo_users
from services.local import LocalPlatform

OFF: dict[str, Any] = {"experiments": []}
ON: dict[str, Any] = {
    "holdout": {"salt": "bench-holdout", "fraction": 0.02},
    "experiments": [
        {
            "id": "candidates",
            "layer": "retrieval",
            "salt": "bench-c",
            "arms": [
                {"name": "control", "weight": 50},
                {"name": "c500", "weight": 50, "overrides": {"candidates": 500}},
            ],
        },
        {
            "id": "ranking",
            "layer": "ranking",
            "salt": "bench-r",
            "arms": [{"name": "control", "weight": 50}, {"name": "same", "weight": 50}],
        },
        {"id": "ui", "layer": "ui", "salt": "bench-u", "arms": [{"name": "control", "weight": 100}]},
    ],
}


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--requests", type=int, default=400, help="per mode")
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/experiments_gateway_overhead.json"))
    args = parser.parse_args()
    users = demo_users(args.artifacts_dir, 50)
    samples: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as work:
        exp_file = Path(work) / "experiments.yaml"
        exp_file.write_text(yaml.safe_dump(OFF))
        platform = LocalPlatform.on_free_ports(
            args.artifacts_dir,
            Path(work) / "logs",
            event_log=Path(work) / "events.jsonl",
            extra_args={"gateway": ["--experiments", str(exp_file), "--experiments-reload-s", "0.1"]},
        )
        with platform, Client(platform.address("gateway")) as client:
            for u in users * 2:  # warm-up
                client.recommend(u, k=10)
            done = 0
            while done < args.requests:
                for mode, doc in (("off", OFF), ("on", ON)):
                    exp_file.write_text(yaml.safe_dump(doc))
                    os.utime(exp_file, ns=(time.time_ns(), time.time_ns()))
                    want = len(doc["experiments"]) > 0
                    while bool(client.recommend("probe", k=1).assignments) != want:
                        time.sleep(0.05)
                    for i in range(args.block):
                        start = time.perf_counter()
                        client.recommend(users[(done + i) % len(users)], k=10)
                        samples[mode].append((time.perf_counter() - start) * 1000)
                done += args.block
    summary: dict[str, Any] = {
        mode: {
            "requests": len(v),
            "mean_ms": round(statistics.fmean(v), 3),
            "p50_ms": round(pct(v, 0.5), 3),
            "p99_ms": round(pct(v, 0.99), 3),
        }
        for mode, v in samples.items()
    }
    summary["overhead_p50_ms"] = round(summary["on"]["p50_ms"] - summary["off"]["p50_ms"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'mode':<6}{'requests':>10}{'mean ms':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for mode in ("off", "on"):
        s = summary[mode]
        print(f"{mode:<6}{s['requests']:>10}{s['mean_ms']:>10.2f}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}")
    print(f"overhead at p50: {summary['overhead_p50_ms']} ms; written to {args.out}")


if __name__ == "__main__":
    main()
