"""Each candidate source alone on the validation holdouts (bench/validation.py), per variant.

A source's own settings (EASE's lambda, ALS's factors and regularisation, a table's neighbours, ...)
are chosen on how the source ranks alone, not through the ranker: this tool fits every source of the
pipeline on the inner train of each validation split (no test split is read) and prints each source's
MAP@10 on the inner holdout, per variant, averaged over the splits. Beside them, the recall of the fused
candidates (`fusion.candidates` of them, what the ranker gets): the share of each holdout user's items
among their candidates, averaged over users, so a fusion setting (`fusion.k`, `fusion.fused`) can be
screened before the ranker is asked (bench/ranker_variants.py).

    .venv/bin/python bench/sources_alone.py --variant shrink:cooc.shrinkage=50 --variant n200:ease.neighbours=200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.validation import (  # noqa: E402
    add_arguments,
    apply,
    base_config,
    load_ml100k,
    parse_split,
    read_variants,
    validation_split,
)
from services.common.sources.base import exclusion  # noqa: E402
from services.trainer.evaluation import K, relevant_sets  # noqa: E402
from services.trainer.metrics import mean_metrics  # noqa: E402
from services.trainer.pipeline import PipelineConfig, Progress, Stage, fit_stage  # noqa: E402
from services.trainer.universe import Universe  # noqa: E402

DEFAULT_SPLITS = ("42:9999", "43:9999", "44:9999")


def candidate_recall(stage: Stage, config: PipelineConfig, relevant: dict[str, set[str]]) -> float:
    """The mean over users of the share of their held-out items among their fused candidates."""
    n = config.fusion.candidates
    lists = {user: stage.universe.ids(stage.candidates(user, config).rows) for user in relevant}
    return mean_metrics(lists, relevant, n)[f"recall@{n}"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, DEFAULT_SPLITS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sources_alone.json")
    args = parser.parse_args()
    variants = read_variants(args.variant)
    splits = [parse_split(s) for s in args.splits]
    data = load_ml100k(args.data)
    started = time.perf_counter()
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    recall: dict[str, list[float]] = {name: [] for name in variants}
    for outer, inner in splits:
        known, train, holdout = validation_split(data, outer, inner, args.inner_share)
        universe = Universe.build(known, train)
        for name, pairs in variants.items():
            config = apply(base_config(inner), pairs)
            stage = fit_stage(universe, train, config, inner, Progress(False))
            relevant = relevant_sets(stage, holdout)
            for source_name, source in stage.sources.items():
                lists = {}
                for user in relevant:
                    history = stage.histories[user]
                    rows, _ = source.scores(history).top(K, exclusion(history.as_set))
                    lists[user] = universe.ids(rows)
                scores[name].setdefault(source_name, []).append(mean_metrics(lists, relevant, K)[f"map@{K}"])
            recall[name].append(candidate_recall(stage, config, relevant))
            print(
                f"split {outer}:{inner} {name}: "
                + " ".join(f"{s} {v[-1]:.4f}" for s, v in scores[name].items())
                + f"; candidates' recall {recall[name][-1]:.4f}",
                file=sys.stderr,
                flush=True,
            )
    table = {name: {s: round(float(np.mean(v)), 5) for s, v in per.items()} for name, per in scores.items()}
    recall_table = {name: round(float(np.mean(v)), 5) for name, v in recall.items()}
    result = {
        "splits": args.splits,
        "variants": {name: dict(pairs) for name, pairs in variants.items()},
        "per_split": scores,
        "mean_map@10": table,
        "per_split_candidate_recall": recall,
        "mean_candidate_recall": recall_table,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    names = sorted({s for row in table.values() for s in row})
    print(f"{'variant':<16}" + "".join(f"{s:>9}" for s in names) + f"{'cand. R':>9}")
    for name, row in table.items():
        print(
            f"{name:<16}"
            + "".join(f"{row[s]:>9.4f}" if s in row else f"{'':>9}" for s in names)
            + f"{recall_table[name]:>9.4f}"
        )
    print(
        f"MAP@10 alone and the fused candidates' recall, mean over {len(splits)} splits;"
        f" wall time {result['wall_seconds']:.0f} s; written {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
