"""Sequence EASE: EASE's closed form over the sequence-pair counts instead of the co-occurrence Gram
matrix, so it learns which items are rated near which (services.common.sources.sequence).

G = pairs + (window / 5) diag(item counts), B = I - P diagMat(1 / diag(P)), P = (G + lambda I)^-1, zero
diagonal; a user's score is their history row times B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.sources.base import FitData, FitError
from services.common.sources.dense import closed_form, dense_items, table
from services.common.sources.sequence import sequence_pairs
from services.common.sources.tables import TableSource


@dataclass(frozen=True)
class SequenceEaseParams:
    window: int = 20
    lam: float = 200.0
    neighbours: int = 500
    max_items: int = 5000


class SequenceEase(TableSource):
    name = "seqease"
    Params = SequenceEaseParams

    @classmethod
    def fit(cls, data: FitData, params: SequenceEaseParams) -> SequenceEase:
        if params.window < 1:
            raise FitError(cls.name, f"window must be >= 1, got {params.window}")
        if not params.lam > 0:
            raise FitError(cls.name, f"lam must be > 0 (lam {params.lam} can make the system singular)")
        items = dense_items(data, cls.name, params.max_items)
        g = sequence_pairs(data, params.window)[items][:, items].toarray().astype(np.float64)
        counts = data.item_counts()[items]
        g[np.diag_indices_from(g)] += counts * params.window / 5.0 + params.lam
        b = closed_form(g, data.threads, cls.name, f"the sequence Gram matrix + {params.lam} I")
        return cls(params, table(b, items, data.n_items, params.neighbours))
