"""EASE (Steck 2019): the closed-form item-item linear autoencoder.

B = I - P diagMat(1 / diag(P)), P = (X'X + lambda I)^-1, zero diagonal; a user's score is their history
row times B. Exported as each item's `neighbours` largest weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from services.common.sources.base import FitData, FitError
from services.common.sources.dense import dense_items, gram, placed
from services.common.sources.tables import NeighbourTable, TableSource


@dataclass(frozen=True)
class EaseParams:
    lam: float = 700.0  # best of 100..1000 for EASE alone on the validation holdout (docs/evaluation.md)
    neighbours: int = 500
    max_items: int = 5000


class Ease(TableSource):
    name = "ease"
    Params = EaseParams

    @classmethod
    def fit(cls, data: FitData, params: EaseParams) -> Ease:
        if not params.lam > 0:
            raise FitError(cls.name, f"lam must be > 0 (lam {params.lam} makes X'X + lam I singular)")
        items = dense_items(data, cls.name, params.max_items)
        g = gram(data, items)
        g[np.diag_indices_from(g)] += params.lam
        with threadpool_limits(limits=data.threads, user_api="blas"):
            try:
                p = np.linalg.inv(g)
            except np.linalg.LinAlgError as e:
                raise FitError(cls.name, f"X'X + {params.lam} I is singular ({e})") from e
        b = p / (-np.diag(p))
        b[np.diag_indices_from(b)] = 0.0
        if not np.isfinite(b).all():
            raise FitError(cls.name, f"lam {params.lam} gives non-finite weights")
        table = NeighbourTable.from_matrix(b.astype(np.float32), params.neighbours)
        return cls(params, placed(table, items, data.n_items))
