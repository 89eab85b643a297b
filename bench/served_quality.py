"""Quality of the served pipeline (`recsys train`: ALS retrieval + the served ranker) by seed, with and
without the ranker's recent_sequence feature. Writes JSON, prints a table.

Leave-last protocol by default: each user's latest 5 interactions are held out, so every user is
scored (the time split scores 28 of latest-small's 610 users, too few to tell two settings apart).

    .venv/bin/python bench/served_quality.py [--data DIR ...] [--seeds 42 1 2] [--protocol leave-last]
"""

from __future__ import annotations

import argparse
import json
import platform as host
import statistics
import tempfile
import time
from pathlib import Path

from services.trainer.data import BUNDLED_DATA
from services.trainer.pipeline import TrainConfig, train

VARIANTS = {"with recent_sequence": 50, "without (--sequence-neighbours 0)": 0}
METRICS = ("map@10", "ndcg@10", "precision@10", "recall@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, nargs="+", default=[BUNDLED_DATA, Path.home() / ".cache/recsys/ml-100k"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--protocol", choices=("leave-last", "time"), default="leave-last")
    parser.add_argument("--leave-n", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/served_quality.json"))
    args = parser.parse_args()
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            if not data.exists():
                print(f"skipping {data}: not found (MovieLens 100k: ../shared/scripts/get-ml100k.sh)")
                continue
            for variant, keep in VARIANTS.items():
                for seed in args.seeds:
                    started = time.perf_counter()
                    version = train(
                        TrainConfig(
                            data=data,
                            out=Path(tmp) / f"{data.name}-{keep}-{seed}",
                            protocol=args.protocol,
                            leave_n=args.leave_n,
                            sequence_neighbours=keep,
                            seed=seed,
                            progress=False,
                        )
                    )
                    metrics = version.manifest["metrics"]
                    runs.append(
                        {
                            "data": version.manifest["data"]["source"],
                            "variant": variant,
                            "seed": seed,
                            "users": metrics["evaluation"]["users"],
                            "ranking": metrics["ranking"],
                            "retrieval": metrics["retrieval"],
                            "seconds": round(time.perf_counter() - started, 1),
                        }
                    )
                    print(f"{runs[-1]['data']} {variant} seed {seed}: {metrics['ranking']}", flush=True)
    table = []
    for data in dict.fromkeys(str(r["data"]) for r in runs):
        for variant in VARIANTS:
            mine = [r for r in runs if r["data"] == data and r["variant"] == variant]
            row: dict[str, object] = {"data": data, "variant": variant, "users": mine[0]["users"]}
            for metric in METRICS:
                values = [float(r["ranking"][metric]) for r in mine]  # type: ignore[index]
                row[metric] = round(statistics.mean(values), 4)
                row[f"{metric}_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
            row["retrieval_ndcg@10"] = round(
                statistics.mean(float(r["retrieval"]["ndcg@10"]) for r in mine),  # type: ignore[index]
                4,
            )
            table.append(row)
    out = {
        "protocol": args.protocol,
        "leave_n": args.leave_n if args.protocol == "leave-last" else None,
        "seeds": args.seeds,
        "table": table,
        "runs": runs,
        "host": {"python": host.python_version(), "machine": host.machine()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nmean ± sd over seeds {args.seeds}, protocol {args.protocol}")
    print(
        f"{'data':16s} {'variant':34s} {'users':>5s} "
        + " ".join(f"{m:>16s}" for m in METRICS)
        + "  retrieval nDCG"
    )
    for row in table:
        cells = " ".join(f"{row[m]:.4f} ± {row[f'{m}_sd']:.4f}" for m in METRICS)
        print(
            f"{row['data']!s:16s} {row['variant']!s:34s} {row['users']!s:>5s} {cells}  {row['retrieval_ndcg@10']:.4f}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
