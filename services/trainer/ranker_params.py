"""The LightGBM parameters every ranker of the trainer uses (served and offline), in one place."""

from __future__ import annotations

from typing import Any


def lightgbm_params(
    *,
    objective: str,
    eval_at: int,
    truncation_level: int,
    learning_rate: float,
    num_leaves: int,
    min_data_in_leaf: int,
    threads: int,
    seed: int,
) -> dict[str, Any]:
    """LambdaRank (or another objective) with row/feature bagging and L2, deterministic for a seed."""
    return {
        "objective": objective,
        "metric": "ndcg",
        "eval_at": [eval_at],
        "lambdarank_truncation_level": truncation_level,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": min_data_in_leaf,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "num_threads": threads,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
