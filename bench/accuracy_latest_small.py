"""MovieLens latest-small, served, on a per-user time holdout: each user's latest 5 interactions held
out, the rest written as a MovieLens directory (ratings; the movies and tags a model trained on it may
know), `recsys train --protocol leave-last --leave-n 5` on it, then Recommend(k=10) through the gateway
for every user, scored against the held-out interactions next to the same artifacts in-process and
each source alone (EASE and popularity among them: the served pipeline must beat both).

    .venv/bin/python bench/accuracy_latest_small.py [--seeds 42 43 44] [--set NAME=VALUE ...]

Writes bench/results/accuracy_latest_small.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.served import (  # noqa: E402
    METRICS,
    check_settings,
    per_seed,
    recsys_train,
    relevant_sets,
    serve_and_score,
    write_train_split,
)
from services.trainer.benchmark import aggregate  # noqa: E402
from services.trainer.data import BUNDLED_DATA, load  # noqa: E402
from services.trainer.splits import leave_last_n  # noqa: E402

LEAVE_N = 5


def run_seed(seed: int, settings: list[str], work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    train, test = leave_last_n(load(BUNDLED_DATA).log, LEAVE_N, seed=seed)
    split_dir, artifacts = work / "train-split", work / "artifacts"
    write_train_split(BUNDLED_DATA, train, test, split_dir)
    print(f"seed {seed}:", file=sys.stderr, flush=True)
    flags = ["--protocol", "leave-last", "--leave-n", str(LEAVE_N), "--seed", str(seed)]
    trained = recsys_train(
        split_dir, artifacts, [*flags, *(a for s in settings for a in ("--set", s))], work / "train.log"
    )
    scored = serve_and_score(artifacts, relevant_sets(train, test), work)
    result = {"seed": seed, "sizes": {"train": len(train), "test": len(test)}, **scored}
    result["seconds"] = {"train": round(trained, 1), "total": round(time.perf_counter() - started, 1)}
    print(f"seed {seed}: served {result['served']}", file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy_latest_small.json")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep each seed's split, artifacts and logs here"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    check_settings(args.settings)
    results = per_seed(args.seeds, args.keep, lambda seed, work: run_seed(seed, args.settings, work))
    rows = {
        name: {m: aggregate([r[name][m] for r in results]) for m in METRICS}
        for name in ("served", "in_process")
    }
    for name in results[0]["baselines"]:
        rows[name] = {m: aggregate([r["baselines"][name][m] for r in results]) for m in METRICS}
    beats = {
        rival: all(rows["served"][m]["mean"] > rows[rival][m]["mean"] for m in METRICS)
        for rival in ("ease", "popular")
    }
    result = {
        "benchmark": "accuracy_latest_small (served, per-user time holdout)",
        "protocol": f"each user's latest {LEAVE_N} interactions held out (leave_last_n)",
        "seeds": args.seeds,
        "settings": args.settings,
        "per_seed": results,
        "summary": {"rows": rows, "served_beats": beats},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"MovieLens latest-small, each user's latest {LEAVE_N} held out; seeds {args.seeds}; mean ± std")
    print(f"{'':28}" + "".join(f"{m:>18}" for m in METRICS))
    for name, row in rows.items():
        label = {"served": "served (gateway)", "in_process": "in-process"}.get(name, f"{name} alone")
        print(f"{label:28}" + "".join(f"{row[m]['mean']:>11.4f}±{row[m]['std']:.4f}" for m in METRICS))
    print("served beats: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in beats.items()))
    print(f"wall time {result['wall_seconds']:.0f} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
