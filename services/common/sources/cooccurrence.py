"""Item-item co-occurrence (item kNN): the cosine similarity of item columns, optionally shrunk.

sim(i, j) = |users of i and j| / (sqrt(|i| |j|) + shrinkage), zero diagonal; each target item j keeps
its `neighbours` most similar items i (the classic item-kNN pruning), and a user's score for j sums
sim(i, j) over their history. Shrinkage pulls the similarity of rarely co-rated pairs towards zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.common.sources.base import FitData, FitError
from services.common.sources.tables import NeighbourTable, TableSource


@dataclass(frozen=True)
class CooccurrenceParams:
    neighbours: int = 200
    shrinkage: float = 0.0


def similarity(data: FitData, neighbours: int, shrinkage: float, source: str) -> NeighbourTable:
    """The pruned (items x items) cosine similarity as a table over history items."""
    if neighbours < 1:
        raise FitError(source, f"neighbours must be >= 1, got {neighbours}")
    if shrinkage < 0:
        raise FitError(source, f"shrinkage must be >= 0, got {shrinkage}")
    x = data.matrix.astype(np.float32)
    gram = (x.T @ x).tocsc()
    counts = np.asarray(x.sum(axis=0), dtype=np.float64).reshape(-1)
    norms = np.sqrt(np.maximum(counts, 1e-9))
    n = data.n_items
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    vals: list[npt.NDArray[np.float32]] = []
    # column by column (a target item and its co-rated items): sparse, so a large catalogue fits
    for j in range(n):
        start, end = gram.indptr[j], gram.indptr[j + 1]
        i = gram.indices[start:end].astype(np.int64)
        v = gram.data[start:end].astype(np.float64) / (norms[i] * norms[j] + shrinkage)
        v[i == j] = 0.0
        keep = v > 0
        i, v = i[keep], v[keep]
        if i.size > neighbours:
            cut = -np.partition(-v, neighbours - 1)[neighbours - 1]
            top = v >= cut  # ties at the cut all stay
            i, v = i[top], v[top]
        rows.append(i)
        cols.append(np.full(i.size, j, dtype=np.int64))
        vals.append(v.astype(np.float32))
    import scipy.sparse as sp

    table = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float32
    )
    return NeighbourTable.from_matrix(table, n)


class Cooccurrence(TableSource):
    name = "cooc"
    Params = CooccurrenceParams

    @classmethod
    def fit(cls, data: FitData, params: CooccurrenceParams) -> Cooccurrence:
        return cls(params, similarity(data, params.neighbours, params.shrinkage, cls.name))
