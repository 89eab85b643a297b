"""Each candidate source alone on the validation holdouts, for settings given as pipeline fields.

A source's own hyper-parameters (EASE's λ, ALS's factors and regularisation, ...) are chosen on how the
source ranks alone, not through the ranker: this tool fits every source of `fit_sources` on the inner
train of each validation split (an outer seed's train split again with an inner seed, so no test split
is read) and prints each source's MAP@10 on the inner holdout, per variant and split.

    .venv/bin/python bench/sources_alone.py --variant old_als:als_factors=32,als_regularization=0.1

Variants are written as for bench/ranker_variants.py (NAME:FIELD=VALUE,...); the defaults always run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ranker_variants import (  # noqa: E402
    add_validation_arguments,
    load_ml100k,
    parse_split,
    read_variants,
    validation_split,
)

from services.trainer import sources as S  # noqa: E402
from services.trainer.metrics import mean_metrics  # noqa: E402
from services.trainer.offline import SOURCES, K, OfflineConfig, fit_sources, make_context, relevant_sets  # noqa: E402

DEFAULT_SPLITS = ("42:9999", "43:9999", "44:9999")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_validation_arguments(parser, DEFAULT_SPLITS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sources_alone.json")
    args = parser.parse_args()
    variants = read_variants(args.variant)
    splits = [parse_split(s) for s in args.splits]
    data = load_ml100k(args.data)
    started = time.perf_counter()
    scores: dict[str, dict[str, list[float]]] = {name: {s: [] for s in SOURCES} for name in variants}
    for outer, inner in splits:
        for name, changes in variants.items():
            config = dataclasses.replace(OfflineConfig(), **changes)
            inner_data, train, holdout = validation_split(data, outer, inner, config)
            ctx = make_context(inner_data, train)
            fitted = fit_sources(ctx, train, config, inner)
            relevant = relevant_sets(holdout, ctx.user_ids)
            users = sorted(relevant)
            index = {u: r for r, u in enumerate(ctx.user_ids)}
            rows = np.array([index[u] for u in users], dtype=np.int64)
            for source in SOURCES:
                top = S.top_n(fitted.scores[source][rows], fitted.x.binary[rows], K)
                ranked = {
                    u: [ctx.item_ids[j] for j in row] for u, row in zip(users, top.tolist(), strict=True)
                }
                scores[name][source].append(mean_metrics(ranked, relevant, K)[f"map@{K}"])
            print(
                f"split {outer}:{inner} {name}: "
                + " ".join(f"{s} {scores[name][s][-1]:.4f}" for s in SOURCES),
                file=sys.stderr,
            )
    table = {
        name: {s: round(float(np.mean(v)), 5) for s, v in per_source.items()}
        for name, per_source in scores.items()
    }
    result = {
        "splits": args.splits,
        "variants": variants,
        "per_split": scores,
        "mean_map@10": table,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':<16}" + "".join(f"{s:>9}" for s in SOURCES))
    for name, row in table.items():
        print(f"{name:<16}" + "".join(f"{row[s]:>9.4f}" for s in SOURCES))
    print(
        f"MAP@10 alone, mean over {len(splits)} splits; wall time {result['wall_seconds']:.0f} s; written {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
