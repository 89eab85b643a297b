"""`recsys train`: flags -> TrainConfig, run the job, print the metrics and the version path."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from services.trainer.data import BUNDLED_DATA, DataError
from services.trainer.pipeline import TrainConfig, train

_HELP = {
    "embedding_dim": "ALS factors (embedding dimension)",
    "als_iterations": "ALS iterations",
    "als_regularization": "ALS L2 regularization",
    "als_alpha": "ALS confidence slope: confidence = 1 + alpha * rating",
    "sequence_window": "positions apart two items may be rated to count as sequence neighbours",
    "sequence_neighbours": "sequence neighbours kept per item (the ranker's recent_sequence feature; 0: off)",
    "candidates": "retrieval candidates per user (ranker training and evaluation)",
    "protocol": "evaluation hold-out: time (the latest test-fraction of all interactions) or leave-last "
    "(each user's latest leave-n)",
    "test_fraction": "share of the latest interactions held out for evaluation (protocol time)",
    "leave_n": "interactions held out per user for evaluation (protocol leave-last)",
    "label_fraction": "share of train's interactions in each ranker label window",
    "ranker_windows": "number of consecutive label windows the ranker learns from",
    "learning_rate": "LightGBM learning rate",
    "num_leaves": "LightGBM leaves per tree",
    "min_data_in_leaf": "LightGBM minimum rows per leaf",
    "max_rounds": "LightGBM boosting rounds at most (early stopping picks fewer)",
    "early_stopping_rounds": "rounds without validation gain before stopping",
    "validation_fraction": "share of ranker user groups held out for early stopping",
    "seed": "random seed (ALS, LightGBM, validation split)",
    "threads": "threads for ALS, FAISS and LightGBM",
}
_TUNABLE = [f for f in dataclasses.fields(TrainConfig) if f.name in _HELP]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=BUNDLED_DATA,
        help="MovieLens directory (ratings.csv[, movies.csv, tags.csv]) or a CSV user,item[,rating],timestamp"
        " (default: the bundled MovieLens latest-small)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts"), help="artifact root (default: artifacts)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they are drawn on a terminal only)"
    )
    for f in _TUNABLE:
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            default=f.default,
            help=f"{_HELP[f.name]} (default: {f.default})",
        )


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {f.name: getattr(ns, f.name) for f in _TUNABLE if hasattr(ns, f.name)}
    return TrainConfig(
        data=Path(ns.data), out=Path(ns.out), progress=not getattr(ns, "no_progress", False), **values
    )


def main(ns: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        config = config_from_args(ns)
        config.validate()
    except ValueError as e:
        print(f"recsys train: {e}", file=sys.stderr)
        return 2
    try:
        version = train(config)
    except DataError as e:
        print(f"recsys train: {e}", file=sys.stderr)
        return 2
    metrics = version.manifest["metrics"]
    print(f"trained {version.version} in {version.manifest['training']['seconds']:.1f}s")
    print(f"  evaluated on {metrics['evaluation']['users']} users of the latest time slice")
    print(f"  {'':22}{'recall@10':>10}{'precision@10':>14}{'ndcg@10':>10}")
    for name, label in (
        ("popularity", "popularity"),
        ("retrieval", "retrieval"),
        ("ranking", "retrieval + ranking"),
    ):
        m = metrics[name]
        print(f"  {label:22}{m['recall@10']:>10.4f}{m['precision@10']:>14.4f}{m['ndcg@10']:>10.4f}")
    for key, value in metrics["candidates"].items():
        print(f"  candidate {key}: {value:.4f}")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in version.manifest["training"]["stages"].items())
    print(f"  stages: {stages}")
    print(f"version: {version.path}")
    return 0
