"""Training the ranker: LightGBM learning-to-rank over candidate groups (one group per user and label
slice), a fixed number of rounds, `seeds` models that differ only in their seed
(services.common.ranker.Ensemble combines them). The one place LightGBM parameters are set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.extras import NEEDS_DEEP
from services.common.ranker import Ensemble

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Rows = npt.NDArray[np.int64]
K = 10


@dataclass(frozen=True)
class RankerParams:
    # chosen on the validation protocol (docs/evaluation.md): XE-NDCG (listwise) beat LambdaRank on two
    # trains of three and tied on the third; 150 rounds on every group; three seeded models
    objective: str = "rank_xendcg"  # or "lambdarank", "binary"
    rounds: int = 150
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 200
    seeds: int = 3
    #: lightgbm (the trees above), or a deep family trained with torch and served as ONNX
    #: (services.trainer.deep_ranker; the extra recsys[deep]): dcnv2, deepfm
    family: str = "lightgbm"
    deep_epochs: int = 6
    deep_learning_rate: float = 1e-3
    deep_embedding: int = 16  # the item embedding (and DeepFM's field embeddings)
    deep_hidden: int = 128
    deep_cross_layers: int = 3  # DCN-v2
    deep_groups_per_batch: int = 64

    def lightgbm(self, seed: int, threads: int) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "metric": "ndcg",
            "eval_at": [K],
            "lambdarank_truncation_level": 3 * K,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
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


class Booster:
    """A LightGBM booster as an Ensemble model."""

    def __init__(self, booster: Any, threads: int = 1) -> None:
        self.booster = booster
        self.threads = threads

    def predict(self, matrix: F32, items: Rows | None = None) -> F64:
        return np.asarray(self.booster.predict(matrix, num_threads=self.threads), dtype=np.float64)

    def contributions(self, matrix: F32) -> F64:
        return np.asarray(
            self.booster.predict(matrix, num_threads=self.threads, pred_contrib=True), dtype=np.float64
        )


FAMILIES = ("lightgbm", "dcnv2", "deepfm")


@dataclass
class Groups:
    """Candidate groups: stacked feature rows, binary labels, each group's length, and (for the rankers
    with item embeddings) each row's item row."""

    features: F32
    labels: F64
    lengths: list[int]
    items: Rows | None = None

    @classmethod
    def stack(cls, parts: list[tuple[F32, F64]], width: int, items: list[Rows] | None = None) -> Groups:
        if not parts:
            return cls(np.empty((0, width), dtype=np.float32), np.empty(0), [], np.empty(0, dtype=np.int64))
        return cls(
            np.vstack([f for f, _ in parts]).astype(np.float32),
            np.concatenate([y for _, y in parts]),
            [len(y) for _, y in parts],
            np.concatenate(items).astype(np.int64) if items is not None else None,
        )


def train(
    groups: Groups, names: list[str], params: RankerParams, seed: int, threads: int, n_items: int = 0
) -> Ensemble:
    """`params.seeds` models on every group with a positive, the first with `seed`. One Dataset per
    model, never shared: LightGBM's seed also samples the rows its bin boundaries come from, and about
    half of the seeded models' gain came from their own bins (docs/evaluation.md). A deep family: one
    model (services.trainer.deep_ranker) over the same groups and `n_items` item rows."""
    if params.family != "lightgbm":
        try:
            from services.trainer import deep_ranker
        except ImportError as e:  # installed but not importable: the same one line as when it is missing
            raise ValueError(f"ranker.family {params.family} {NEEDS_DEEP} ({e})") from None

        return Ensemble([deep_ranker.train(groups, params, n_items, seed, threads)])
    import lightgbm as lgb

    bounds = np.cumsum([0, *groups.lengths])
    useful = [g for g in range(len(groups.lengths)) if groups.labels[bounds[g] : bounds[g + 1]].sum() > 0]
    if len(useful) < 2:
        raise ValueError(
            f"only {len(useful)} user(s) have a held-out item among their candidates: too few to train the ranker"
        )
    rows = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in useful])
    models = []
    for k in range(params.seeds):
        data = lgb.Dataset(
            groups.features[rows],
            label=groups.labels[rows],
            group=[groups.lengths[g] for g in useful],
            feature_name=names,
            free_raw_data=False,
        )
        booster = lgb.train(params.lightgbm(seed + 1000 * k, threads), data, num_boost_round=params.rounds)
        models.append(Booster(booster))
    return Ensemble(models)
