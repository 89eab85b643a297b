"""Sequence neighbours: items rated within a few positions of each other in one user's time-ordered
history. The order people rate in carries a signal the order-free sources cannot see.

pairs(i, j) counts the pairs at most `window` positions apart; W[i, j] = pairs(i, j) /
(count(i)^alpha * count(j)^(1 - alpha)) (alpha 0.5 is the cosine; a larger alpha penalises the
popularity of the scored item j less); a user's score for j sums W[i, j] over their history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.common.sources.base import FitData, FitError
from services.common.sources.tables import NeighbourTable, TableSource


@dataclass(frozen=True)
class SequenceParams:
    window: int = 5
    alpha: float = 0.7
    neighbours: int = 500


def sequence_pairs(data: FitData, window: int) -> sp.csr_matrix:
    """(items, items) symmetric float32 counts of distinct item pairs rated at most `window` positions
    apart in one user's time-ordered slice."""
    users, rows = data.event_users, data.event_items
    order = np.argsort(users, kind="stable")  # events are in time order: per user, still in time order
    users, rows = users[order], rows[order]
    a: list[npt.NDArray[np.int64]] = []
    b: list[npt.NDArray[np.int64]] = []
    for d in range(1, window + 1):
        pair = (users[d:] == users[:-d]) & (rows[d:] != rows[:-d])
        a += [rows[:-d][pair], rows[d:][pair]]
        b += [rows[d:][pair], rows[:-d][pair]]
    n = data.n_items
    r, c = (np.concatenate(a), np.concatenate(b)) if a else (np.empty(0, np.int64), np.empty(0, np.int64))
    counts = sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=(n, n))
    counts.sum_duplicates()
    return counts


class Sequence(TableSource):
    name = "seq"
    Params = SequenceParams

    @classmethod
    def fit(cls, data: FitData, params: SequenceParams) -> Sequence:
        if params.window < 1:
            raise FitError(cls.name, f"window must be >= 1, got {params.window}")
        popularity = data.item_counts() + 1.0
        weights = (
            sp.diags((popularity**-params.alpha).astype(np.float32))
            @ sequence_pairs(data, params.window)
            @ sp.diags((popularity ** -(1.0 - params.alpha)).astype(np.float32))
        ).tocsr()
        return cls(params, NeighbourTable.from_matrix(weights, params.neighbours))
