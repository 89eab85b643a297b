"""EASE (Steck 2019): the closed-form item-item linear autoencoder.

B = I - P diagMat(1 / diag(P)), P = (X'X + lambda I)^-1, zero diagonal; a user's score is their history
row times B. Exported as each item's `neighbours` weights of largest magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.sources.base import FitData, FitError
from services.common.sources.dense import closed_form, dense_items, gram, table
from services.common.sources.tables import TableSource


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
        b = closed_form(g, data.threads, cls.name, f"X'X + {params.lam} I")
        return cls(params, table(b, items, data.n_items, params.neighbours))
