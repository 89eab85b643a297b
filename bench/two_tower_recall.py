"""The two-tower source against ALS and the fused sources, as retrieval: recall@100 and recall@500 on the
published ML-100k protocol (stratified by item, 75 / 25, seeds 42, 43, 44), each list as the retrieval
service would serve it (the user's history excluded), and each source's fit time.

Rows: `als` and `twotower` alone; `fused` (the default fused sources, reciprocal-rank fusion) and
`fused+twotower` (the same with the two-tower source fused too). Only retrieval is fitted (no ranker).

    .venv/bin/python bench/two_tower_recall.py [--seeds 42 43 44] [--data DIR] [--set twotower.dim=128 ...]

Writes bench/results/two_tower_recall.json and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.validation import load_ml100k  # noqa: E402
from services.common.fusion import generate  # noqa: E402
from services.common.sources.base import exclusion  # noqa: E402
from services.trainer.benchmark import aggregate  # noqa: E402
from services.trainer.evaluate_cli import DEFAULT_CACHE  # noqa: E402
from services.trainer.evaluation import relevant_sets  # noqa: E402
from services.trainer.metrics import mean_metrics  # noqa: E402
from services.trainer.pipeline import DEFAULT_SOURCES, PipelineConfig, Progress, fit_stage  # noqa: E402
from services.trainer.protocols import Protocol  # noqa: E402
from services.trainer.universe import Universe  # noqa: E402

KS = (100, 500)
ROWS = ("als", "twotower", "fused", "fused+twotower")


def config_for(settings: list[str], seed: int) -> PipelineConfig:
    base = PipelineConfig(protocol=Protocol(name="stratified"), seed=seed)
    return base.with_settings(
        [f"sources={','.join((*DEFAULT_SOURCES, 'twotower'))}", f"fusion.depth={max(KS)}", *settings]
    )


def run_seed(data: Any, settings: list[str], seed: int) -> dict[str, Any]:
    config = config_for(settings, seed)
    train, test = config.protocol.holdout(data.log, seed)
    universe = Universe.build(data.known_from(train), train)
    progress = Progress(True, f"seed {seed}: ")
    stage = fit_stage(universe, train, config, seed, progress)
    relevant = relevant_sets(stage, test)
    fused = config.fusion
    with_tower = dataclasses.replace(fused, fused=(*fused.fused, "twotower"))
    lists: dict[str, dict[str, list[str]]] = {name: {} for name in ROWS}
    for user in sorted(relevant):
        history = stage.histories[user]
        excluded = exclusion(history.as_set)
        for name in ("als", "twotower"):
            rows, _ = stage.sources[name].scores(history).top(max(KS), excluded)
            lists[name][user] = universe.ids(rows)
        others = {s: v for s, v in stage.sources.items() if s != "twotower"}
        lists["fused"][user] = universe.ids(generate(others, history, max(KS), fused).rows)
        lists["fused+twotower"][user] = universe.ids(
            generate(stage.sources, history, max(KS), with_tower).rows
        )
    recall = {
        name: {f"recall@{k}": round(mean_metrics(lists[name], relevant, k)[f"recall@{k}"], 6) for k in KS}
        for name in ROWS
    }
    seconds = {s: progress.seconds[f"source {s}"] for s in config.sources}
    print(f"seed {seed}: {recall}", file=sys.stderr, flush=True)
    return {"seed": seed, "users": len(relevant), "recall": recall, "fit_seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_CACHE, help="MovieLens 100k directory (u.data)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "two_tower_recall.json")
    args = parser.parse_args()
    data = load_ml100k(args.data)
    started = time.perf_counter()
    runs = [run_seed(data, args.settings, seed) for seed in args.seeds]
    summary = {
        name: {m: aggregate([r["recall"][name][m] for r in runs]) for m in runs[0]["recall"][name]}
        for name in ROWS
    }
    result = {
        "protocol": "ML-100k, stratified by item 75/25 (the published protocol), history excluded",
        "seeds": args.seeds,
        "settings": args.settings,
        "twotower": dataclasses.asdict(config_for(args.settings, 0).params("twotower")),
        "per_seed": runs,
        "summary": summary,
        "fit_seconds_mean": {
            s: round(float(np.mean([r["fit_seconds"][s] for r in runs])), 2) for s in ("als", "twotower")
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'':18}" + "".join(f"{f'recall@{k}':>14}" for k in KS))
    for name in ROWS:
        cells = "".join(
            f"{summary[name][f'recall@{k}']['mean']:>8.4f} ±{summary[name][f'recall@{k}']['std']:.3f}"
            for k in KS
        )
        print(f"{name:18}{cells}")
    print(f"fit seconds (mean): {result['fit_seconds_mean']}; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
