"""ALS (implicit feedback, Hu et al. 2008, fitted by `implicit`): item vectors in FAISS, and a user
vector folded in from the history at request time.

The fit learns item factors Y on confidence alpha for every interaction (1 elsewhere). A user's vector
is ALS's own least-squares step for that user against the fitted Y, solved exactly:
u = (Y'Y + lambda I + (alpha - 1) Y_H'Y_H)^-1 alpha Y_H'1 over the history H. So a user the model was
fitted on gets (nearly) the vector ALS learned for them, and a new click moves the vector at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from services.common.sources.base import F32, FitData, FitError, History
from services.common.sources.vectors import VectorSource


@dataclass(frozen=True)
class AlsParams:
    # chosen alone on the validation holdouts of three trains (bench/sources_alone.py): the best
    # regularisation is about 8 times alpha at any number of factors (docs/evaluation.md)
    factors: int = 128
    regularization: float = 40.0
    alpha: float = 5.0
    iterations: int = 15
    index: str = "auto"
    recall_target: float = 0.95


class Als(VectorSource):
    name = "als"
    Params = AlsParams

    def __init__(self, params: AlsParams, vectors: F32, index: Any, index_info: dict[str, Any]) -> None:
        super().__init__(params, vectors, index, index_info)
        y = self.vectors.astype(np.float64)
        self._gram = y.T @ y + params.regularization * np.eye(y.shape[1])

    @classmethod
    def fit(cls, data: FitData, params: AlsParams) -> Als:
        from implicit.cpu.als import AlternatingLeastSquares

        if params.factors < 1 or params.iterations < 1:
            raise FitError(
                cls.name, f"factors and iterations must be >= 1, got {params.factors}, {params.iterations}"
            )
        if not params.regularization > 0 or not params.alpha > 0:
            raise FitError(
                cls.name, f"regularization and alpha must be > 0, got {params.regularization}, {params.alpha}"
            )
        if data.matrix.nnz == 0:
            raise FitError(cls.name, "no interactions to fit on")
        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(
                factors=params.factors,
                regularization=params.regularization,
                alpha=params.alpha,
                iterations=params.iterations,
                calculate_training_loss=False,
                num_threads=data.threads,
                random_state=data.seed,
            )
            model.fit(data.matrix.astype(np.float32), show_progress=False)
        items = np.asarray(model.item_factors, dtype=np.float32)
        if not np.isfinite(items).all():
            raise FitError(cls.name, "the fit diverged (non-finite factors)")
        return cls.over(params, items, data)

    def query(self, history: History) -> F32 | None:
        rows = history.scored
        if rows.size == 0:
            return None
        y = self.vectors[rows].astype(np.float64)
        alpha = self.params.alpha
        a = self._gram + (alpha - 1.0) * (y.T @ y)
        b = alpha * y.sum(axis=0)
        u: F32 = np.linalg.solve(a, b).astype(np.float32)
        return u
