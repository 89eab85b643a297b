"""Paired comparison of pipeline settings on the validation protocol (bench/validation.py), the
expensive part of each setting computed once.

On each validation split the tool computes once the stage-A groups and the stage-B candidates of the
holdout's users, with their features, and caches them under --cache, keyed by the trainer's code and
the data (a change to either starts a new cache). A variant of the ranker's own settings (`ranker.*`)
reuses the defaults' cache and costs only its LightGBM fits; any other setting gets groups and
candidates of its own, computed once per split and setting.

Each variant is compared with the defaults, user by user, on the same splits: the mean difference in
AP@10 (the comparison's MAP) and nDCG@10, its standard error over users, and on how many splits the
variant is ahead. This is the method of the validation rounds in docs/evaluation.md.

    .venv/bin/python bench/ranker_variants.py --variant rounds250:ranker.rounds=250 \\
        --variant shrink:cooc.shrinkage=50 [--splits 42:9999 43:9999 44:9999]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.validation import (  # noqa: E402
    INNER_SHARE,
    NINE_SPLITS,
    add_arguments,
    apply,
    base_config,
    load_ml100k,
    parse_split,
    read_variants,
    validation_split,
)
from services.trainer import ranker  # noqa: E402
from services.trainer.data import Dataset  # noqa: E402
from services.trainer.evaluation import K, relevant_sets  # noqa: E402
from services.trainer.metrics import average_precision_at_k, ndcg_at_k  # noqa: E402
from services.trainer.pipeline import PipelineConfig, Progress, fit_stage, ranker_groups  # noqa: E402
from services.trainer.ranker import Groups  # noqa: E402
from services.trainer.universe import Universe  # noqa: E402


def code_fingerprint() -> str:
    """Of the code that computes what is cached: a change to it starts a new cache, never a stale hit."""
    digest = hashlib.sha256()
    for path in sorted(
        [*(ROOT / "services" / "trainer").glob("*.py"), *(ROOT / "services" / "common").rglob("*.py")]
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def setting_key(pairs: list[tuple[str, str]]) -> str:
    """'' for the defaults' groups and candidates, else a digest of the settings that change them."""
    changed = sorted((k, v) for k, v in pairs if not k.startswith("ranker."))
    return "-" + hashlib.sha256(json.dumps(changed).encode()).hexdigest()[:10] if changed else ""


def save_whole(path: Path, **arrays: Any) -> None:
    """Write an .npz so that a cache file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def cached_split(
    data: Dataset, outer: int, inner: int, share: float, config: PipelineConfig, key: str, cache: Path
) -> dict[str, Any]:
    """Stage A's groups and stage B's candidates (ids, features, relevant items) of one split."""
    path = cache / f"split-{outer}-{inner}{key}.npz"
    if not path.exists():
        known, train, holdout = validation_split(data, outer, inner, share)
        universe = Universe.build(known, train)
        progress = Progress(True, f"split {outer}:{inner}{key}: ")
        groups, _ = ranker_groups(universe, train, config, progress)
        stage = fit_stage(universe, train, config, config.seed, Progress(False))
        relevant = relevant_sets(stage, holdout)
        users = sorted(relevant)
        cands = [stage.candidates(u, config) for u in users]
        features = [stage.features(u, c, config) for u, c in zip(users, cands, strict=True)]
        save_whole(
            path,
            a_features=groups.features,
            a_labels=groups.labels,
            a_lengths=np.asarray(groups.lengths, dtype=np.int64),
            b_features=np.vstack(features),
            b_lengths=np.asarray([len(c) for c in cands], dtype=np.int64),
            b_items=np.asarray([i for c in cands for i in universe.ids(c.rows)], dtype=str),
            users=np.asarray(users, dtype=str),
            relevant=np.asarray([json.dumps(sorted(relevant[u])) for u in users]),
        )
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def per_user(split: dict[str, Any], config: PipelineConfig, seed: int) -> tuple[list[float], list[float]]:
    """AP@10 and nDCG@10 of each holdout user under a ranker trained with `config` on the split."""
    groups = Groups(split["a_features"], split["a_labels"], split["a_lengths"].tolist())
    ensemble = ranker.train(groups, config.feature_names, config.ranker, seed, config.threads)
    lengths = split["b_lengths"].tolist()
    scores = ensemble.score_lists(split["b_features"], lengths)
    bounds = np.cumsum([0, *lengths])
    ap, ndcg = [], []
    for i, relevant_json in enumerate(split["relevant"].tolist()):
        items = split["b_items"][bounds[i] : bounds[i + 1]]
        ranked = items[np.argsort(-scores[i], kind="stable")][:K].tolist()
        relevant = set(json.loads(relevant_json))
        ap.append(average_precision_at_k(ranked, relevant, K))
        ndcg.append(ndcg_at_k(ranked, relevant, K))
    return ap, ndcg


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, NINE_SPLITS)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "ranker_variants_cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ranker_variants.json")
    args = parser.parse_args()
    variants = read_variants(args.variant)
    splits = [parse_split(s) for s in args.splits]
    data = load_ml100k(args.data)
    cache = args.cache / f"{code_fingerprint()}-{data.fingerprint[:12]}"
    if args.inner_share != INNER_SHARE:
        cache = cache.with_name(f"{cache.name}-share{args.inner_share:g}")
    started = time.perf_counter()
    scores: dict[str, dict[str, list[list[float]]]] = {name: {"ap": [], "ndcg": []} for name in variants}
    for outer, inner in splits:
        for name, pairs in variants.items():
            config = apply(base_config(inner), pairs)
            split = cached_split(data, outer, inner, args.inner_share, config, setting_key(pairs), cache)
            ap, ndcg = per_user(split, config, inner)
            scores[name]["ap"].append(ap)
            scores[name]["ndcg"].append(ndcg)
        print(
            f"split {outer}:{inner}: "
            + "  ".join(f"{n} MAP {np.mean(s['ap'][-1]):.4f}" for n, s in scores.items()),
            file=sys.stderr,
            flush=True,
        )
    rows = []
    base_ap, base_ndcg = (np.concatenate(scores["defaults"][m]) for m in ("ap", "ndcg"))
    for name, s in scores.items():
        all_ap, all_ndcg = np.concatenate(s["ap"]), np.concatenate(s["ndcg"])
        d_ap, d_ndcg = all_ap - base_ap, all_ndcg - base_ndcg
        ahead = sum(np.mean(v) > np.mean(b) for v, b in zip(s["ap"], scores["defaults"]["ap"], strict=True))
        rows.append(
            {
                "variant": name,
                "settings": dict(variants[name]),
                "map@10": round(float(all_ap.mean()), 5),
                "ndcg@10": round(float(all_ndcg.mean()), 5),
                "map_diff": round(float(d_ap.mean()), 5),
                "map_diff_se": round(float(d_ap.std(ddof=1) / np.sqrt(len(d_ap))), 5),
                "ndcg_diff": round(float(d_ndcg.mean()), 5),
                "ndcg_diff_se": round(float(d_ndcg.std(ddof=1) / np.sqrt(len(d_ndcg))), 5),
                "splits_ahead": int(ahead),
            }
        )
    result = {
        "splits": args.splits,
        "inner_share": args.inner_share,
        "users": len(base_ap),
        "table": rows,
        "scores": scores,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
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
