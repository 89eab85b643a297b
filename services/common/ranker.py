"""The ranker as served and as evaluated: several LightGBM models over the same features (differing only
in their seed), combined per candidate list by the sum of their z-scores within the list, so each model
counts alike whatever the scale of its raw scores (one model's order is its raw order).

The trainer scores with LightGBM boosters; the ranking service with the same trees compiled
(services/ranking/trees.py), which agree to 1e-6. Files: `ranker_<i>.txt`, one LightGBM model each.
A deep family (DCN-v2, DeepFM) is one model, `ranker.onnx`, scored with onnxruntime
(services/ranking/onnx_scorer.py); it also reads each candidate's item row.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Rows = npt.NDArray[np.int64]

#: The file of a deep family's model.
ONNX_FILE = "ranker.onnx"


def model_file(i: int) -> str:
    return f"ranker_{i}.txt"


class Model(Protocol):
    def predict(self, matrix: F32, items: Rows | None = None) -> F64:
        """Raw scores of the rows of `matrix`; `items`: each row's item row (-1 unknown), for the models
        with item embeddings (the trees ignore it; None: every item unknown)."""
        ...

    def contributions(self, matrix: F32) -> F64:
        """(n, features + 1): each feature's SHAP contribution to the raw score, then the base value."""
        ...


def combine(raw: Sequence[F64]) -> F64:
    """One candidate list's score from each model's raw scores of it."""
    total = np.zeros(raw[0].shape[0], dtype=np.float64)
    for scores in raw:
        total += (scores - scores.mean()) / (scores.std() + 1e-12)
    return total


class Ensemble:
    def __init__(self, models: Sequence[Model]) -> None:
        if not models:
            raise ValueError("a ranker needs at least one model")
        self.models = list(models)

    def score(self, matrix: F32, items: Rows | None = None) -> F64:
        """The scores of one user's candidate list (rows of `matrix`, of the item rows `items`)."""
        if matrix.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        return combine([m.predict(matrix, items) for m in self.models])

    def explain(self, matrix: F32, rows: npt.NDArray[np.int64]) -> tuple[F64, F64]:
        """For the candidates `rows` of one list (`matrix`): (base (len(rows),), contributions
        (len(rows), features)) with base + contributions.sum(1) == score(matrix)[rows]. Each model's raw
        score is its base value plus its contributions; `combine` maps it by (raw - mean) / std over
        the list, so the ensemble's contributions are each model's divided by its std, and the base
        takes the means."""
        base = np.zeros(len(rows), dtype=np.float64)
        total = np.zeros((len(rows), matrix.shape[1]), dtype=np.float64)
        for model in self.models:
            raw = model.predict(matrix)
            scale = raw.std() + 1e-12
            parts = model.contributions(matrix[rows])
            total += parts[:, :-1] / scale
            base += (parts[:, -1] - raw.mean()) / scale
        return base, total

    def score_lists(self, matrix: F32, lengths: Sequence[int], items: Rows | None = None) -> list[F64]:
        """`score` of several lists stacked in `matrix` (the models predict each row on its own, so one
        call over the stack gives every list exactly the scores `score` would)."""
        if matrix.shape[0] == 0:
            return [np.empty(0, dtype=np.float64) for _ in lengths]
        raw = [m.predict(matrix, items) for m in self.models]
        bounds = np.cumsum([0, *lengths])
        return [
            combine([r[a:b] for r in raw]) if b > a else np.empty(0, dtype=np.float64)
            for a, b in itertools.pairwise(bounds)
        ]
