"""Paired comparison of pipeline settings on the validation protocol, each setting's sources computed once.

Each validation split is an outer seed's train split again with an inner seed, so no test split is
read. On each split, the tool computes once the stage-A groups and stage-B candidates, with their
features, and caches them under --cache, keyed by the trainer's code and the data (a change to either
starts a new cache). A variant may set any field of OfflineConfig but those that define the validation
split or do not change the ranking. A variant of the ranker's own fields (objective, rounds, learning
rate, leaves, min_data_in_leaf, the number of seeded models) reuses the defaults' cache, so it costs
only its LightGBM fits; any other (sources, fusion, candidates, stacking) gets groups and candidates of
its own, computed once per split and setting and cached beside the defaults'.

Each variant is compared with the defaults, user by user, on the same splits. The table gives the mean
difference in AP@10 (the comparison's MAP) and nDCG@10, its standard error over users, and on how
many splits the variant is ahead. This is the method of the validation rounds in docs/evaluation.md.

    .venv/bin/python bench/ranker_variants.py --variant rounds250:max_rounds=250 \\
        --variant fusion:fused=ease,cooc,als,seq,seqease [--splits 42:9999 43:9999 44:9999]

A tuple field's items are separated by commas, as are a variant's fields: a comma followed by FIELD=
starts the next field.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.trainer.data import Dataset, Log, load  # noqa: E402
from services.trainer.evaluate_cli import DEFAULT_CACHE  # noqa: E402
from services.trainer.metrics import average_precision_at_k, ndcg_at_k  # noqa: E402
from services.trainer.offline import (  # noqa: E402
    K,
    OfflineConfig,
    RankerData,
    Timer,
    candidate_features,
    fit_sources,
    make_context,
    ranker_training_data,
    relevant_sets,
    split_log,
    train_ranker,
)
from services.trainer.splits import stratified_split  # noqa: E402

#: OfflineConfig fields a variant may not set, and why.
FIXED_FIELDS = {
    "protocol": "it defines the validation split",
    "ratio": "it defines the validation split",
    "leave_n": "it defines the validation split",
    "mmr_lambdas": "the table compares the ranker's own order",
    "threads": "it does not change the ranking",
}
#: OfflineConfig fields of the ranker itself: a variant of only these reuses the defaults' cached split.
RANKER_FIELDS = frozenset(
    {
        "objective",
        "max_rounds",
        "learning_rate",
        "num_leaves",
        "min_data_in_leaf",
        "early_stopping_rounds",
        "ranker_seeds",
        "validation_fraction",
    }
)
DEFAULT_SPLITS = tuple(f"{outer}:{inner}" for inner in (9999, 9998, 9997) for outer in (42, 43, 44))


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """'NAME:FIELD=VALUE,FIELD=VALUE' -> (NAME, changes), each value parsed as its field's type."""
    name, sep, body = text.partition(":")
    if not sep or not name or not body:
        sys.exit(f"--variant {text!r}: expected NAME:FIELD=VALUE[,FIELD=VALUE...]")
    defaults = OfflineConfig()
    changes: dict[str, Any] = {}
    for pair in re.split(r",(?=\w+=)", body):
        field, sep, raw = pair.partition("=")
        if field in FIXED_FIELDS:
            sys.exit(f"--variant {text!r}: {field!r} cannot vary: {FIXED_FIELDS[field]}")
        try:
            if not sep:
                raise KeyError(field)
            changes[field] = OfflineConfig.parse_field(field, raw)
        except KeyError:
            sys.exit(f"--variant {text!r}: {field!r} is not a field of OfflineConfig")
        except ValueError as error:
            sys.exit(f"--variant {text!r}: {field}: {error}")
    try:
        dataclasses.replace(defaults, **changes)
    except ValueError as error:
        sys.exit(f"--variant {text!r}: {error}")
    return name, changes


def read_variants(texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The defaults (no changes) and each --variant, by name."""
    return dict([("defaults", {})] + [parse_variant(v) for v in texts])


def add_validation_arguments(parser: argparse.ArgumentParser, splits: Sequence[str]) -> None:
    """--data, --variant and --splits, shared by the tools that compare settings on validation splits."""
    parser.add_argument("--data", type=Path, default=DEFAULT_CACHE, help="MovieLens 100k directory (u.data)")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...", help="a setting to compare"
    )
    parser.add_argument("--splits", nargs="+", default=list(splits), help="OUTER:INNER seed pairs")


def load_ml100k(path: Path) -> Dataset:
    if not (path / "u.data").is_file():
        sys.exit(f"no {path}/u.data: run bench/accuracy_ml100k.py or `recsys data fetch movielens-100k`")
    return load(path)


def parse_split(text: str) -> tuple[int, int]:
    outer, sep, inner = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(outer), int(inner)
    except ValueError:
        sys.exit(f"--splits {text!r}: expected OUTER:INNER seeds, e.g. 42:9999")


def code_fingerprint() -> str:
    """Of the code that computes what is cached: a change to it starts a new cache, never a stale hit."""
    digest = hashlib.sha256()
    for name in ("offline.py", "sources.py", "features.py", "splits.py", "data.py"):
        digest.update((ROOT / "services" / "trainer" / name).read_bytes())
    return digest.hexdigest()[:12]


def validation_split(
    data: Dataset, outer: int, inner: int, config: OfflineConfig
) -> tuple[Dataset, Log, Log]:
    """(data restricted to outer seed's train, inner train, inner holdout): the test split is never read."""
    train0, _ = stratified_split(data.log, 0.75, filter_by="item", seed=outer)
    inner_data = dataclasses.replace(data, log=train0)
    train, holdout = split_log(inner_data, config, inner)
    return inner_data, train, holdout


def save_whole(path: Path, **arrays: Any) -> None:
    """Write an .npz so that a cache file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def setting_key(config: OfflineConfig) -> str:
    """'' for the defaults' groups and candidates, else a short digest of the fields that change them."""
    defaults = OfflineConfig()
    changed = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in RANKER_FIELDS and getattr(config, f.name) != getattr(defaults, f.name)
    }
    if not changed:
        return ""
    return "-" + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:10]


def cached_split(data: Dataset, outer: int, inner: int, config: OfflineConfig, cache: Path) -> dict[str, Any]:
    """Stage A's groups and stage B's candidates of one validation split under `config`, computed once
    into `cache` (a directory per version of the code and the data)."""
    path = cache / f"split-{outer}-{inner}{setting_key(config)}.npz"
    if not path.exists():
        inner_data, train, holdout = validation_split(data, outer, inner, config)
        ctx = make_context(inner_data, train)
        stage_a = ranker_training_data(ctx, train, config, inner, Timer())
        fitted = fit_sources(ctx, train, config, inner)
        relevant = relevant_sets(holdout, ctx.user_ids)
        users = sorted(relevant)
        index = {u: r for r, u in enumerate(ctx.user_ids)}
        rows = np.array([index[u] for u in users], dtype=np.int64)
        _, items, features = candidate_features(ctx, fitted, train, rows, config)
        item_ids = np.array(ctx.item_ids)
        save_whole(
            path,
            a_features=stage_a.features,
            a_labels=stage_a.labels,
            per_user=stage_a.per_user,
            b_features=features,
            b_items=item_ids[items].reshape(len(users), -1),
            relevant=np.array([json.dumps(sorted(relevant[u])) for u in users]),
        )
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def per_user_metrics(
    split: dict[str, Any], predicted: np.ndarray[Any, Any]
) -> tuple[list[float], list[float]]:
    candidates = split["b_items"]
    order = np.argsort(-predicted.reshape(candidates.shape), axis=1, kind="stable")[:, :K]
    ranked = np.take_along_axis(candidates, order, axis=1)
    ap, ndcg = [], []
    for row, relevant_json in zip(ranked.tolist(), split["relevant"].tolist(), strict=True):
        relevant = set(json.loads(relevant_json))
        ap.append(average_precision_at_k(row, relevant, K))
        ndcg.append(ndcg_at_k(row, relevant, K))
    return ap, ndcg


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_validation_arguments(parser, DEFAULT_SPLITS)
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "bench" / "results" / "ranker_variants_cache",
        help="cached splits",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ranker_variants.json")
    args = parser.parse_args()
    variants = read_variants(args.variant)
    splits = [parse_split(s) for s in args.splits]
    base = OfflineConfig()
    data = load_ml100k(args.data)
    cache = args.cache / f"{code_fingerprint()}-{data.fingerprint[:12]}"
    started = time.perf_counter()
    scores: dict[str, dict[str, list[list[float]]]] = {name: {"ap": [], "ndcg": []} for name in variants}
    for outer, inner in splits:
        t0 = time.perf_counter()
        split = cached_split(data, outer, inner, base, cache)
        print(f"split {outer}:{inner}: groups ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for name, changes in variants.items():
            config = dataclasses.replace(base, **changes)
            own = split if not setting_key(config) else cached_split(data, outer, inner, config, cache)
            groups = RankerData(own["a_features"], own["a_labels"], int(own["per_user"]), {})
            ranker, _ = train_ranker(groups, config, inner, Timer())
            split_ap, split_ndcg = per_user_metrics(
                own, ranker.predict(own["b_features"], groups.per_user, config.threads)
            )
            scores[name]["ap"].append(split_ap)
            scores[name]["ndcg"].append(split_ndcg)
        print(
            f"split {outer}:{inner}: "
            + "  ".join(f"{name} MAP {np.mean(s['ap'][-1]):.4f}" for name, s in scores.items()),
            file=sys.stderr,
        )
    rows = []
    base_ap, base_ndcg = (np.concatenate(scores["defaults"][m]) for m in ("ap", "ndcg"))
    for name, s in scores.items():
        ap, ndcg = np.concatenate(s["ap"]), np.concatenate(s["ndcg"])
        d_ap, d_ndcg = ap - base_ap, ndcg - base_ndcg
        ahead = sum(np.mean(v) > np.mean(b) for v, b in zip(s["ap"], scores["defaults"]["ap"], strict=True))
        rows.append(
            {
                "variant": name,
                "changes": variants[name],
                "map@10": round(float(ap.mean()), 5),
                "ndcg@10": round(float(ndcg.mean()), 5),
                "map_diff": round(float(d_ap.mean()), 5),
                "map_diff_se": round(float(d_ap.std(ddof=1) / np.sqrt(len(d_ap))), 5),
                "ndcg_diff": round(float(d_ndcg.mean()), 5),
                "ndcg_diff_se": round(float(d_ndcg.std(ddof=1) / np.sqrt(len(d_ndcg))), 5),
                "splits_ahead": int(ahead),
            }
        )
    result = {
        "splits": args.splits,
        "users": len(base_ap),
        "table": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':<20} {'MAP@10':>8} {'diff ± se':>18} {'nDCG@10':>8} {'diff ± se':>18} ahead")
    for r in rows:
        print(
            f"{r['variant']:<20} {r['map@10']:>8.4f} {r['map_diff']:>+9.5f} ± {r['map_diff_se']:.5f}"
            f" {r['ndcg@10']:>8.4f} {r['ndcg_diff']:>+9.5f} ± {r['ndcg_diff_se']:.5f}"
            f" {r['splits_ahead']}/{len(splits)}"
        )
    print(f"wall time {result['wall_seconds']:.0f} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
