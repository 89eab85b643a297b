"""What the dense item-item fits share: the items they may hold, and a Gram matrix over them.

EASE, sequence EASE and RP3beta build (items x items) matrices, so their cost grows with the square
(memory) and cube (inversion) of the catalogue. Each fits on the `max_items` most interacted items of
its slice (the rest get no table row and no score from it) and refuses to go past `DENSE_LIMIT`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from services.common.sources.base import FitData, FitError, Rows
from services.common.sources.tables import NeighbourTable

#: The largest item count a dense item-item fit accepts (a float64 Gram matrix of 30k items is 7.2 GB).
DENSE_LIMIT = 30_000


def dense_items(data: FitData, source: str, max_items: int) -> Rows:
    """The item rows a dense fit works on: the `max_items` most interacted (ties by row), interacted
    at least once; FitError when `max_items` exceeds DENSE_LIMIT or the slice has too few items."""
    if max_items > DENSE_LIMIT:
        raise FitError(
            source,
            f"max_items {max_items:,} is too many for a dense item-item method (at most {DENSE_LIMIT:,}: "
            f"its matrix needs {8 * max_items**2 / 1e9:,.0f} GB); lower it or leave {source} out of the sources",
        )
    counts = data.item_counts()
    interacted = np.flatnonzero(counts > 0)
    if interacted.size < 2:
        raise FitError(source, f"needs interactions with at least 2 items, the slice has {interacted.size}")
    order = interacted[np.lexsort((interacted, -counts[interacted]))][:max_items]
    out: Rows = np.sort(order).astype(np.int64)
    return out


def gram(data: FitData, items: Rows) -> npt.NDArray[np.float64]:
    """X'X over `items` (co-occurrence counts, item counts on the diagonal), float64."""
    x = data.matrix[:, items]
    out: npt.NDArray[np.float64] = (x.T @ x).toarray().astype(np.float64)
    return out


def closed_form(
    gram: npt.NDArray[np.float64], threads: int, source: str, what: str
) -> npt.NDArray[np.float64]:
    """EASE's B = I - P diagMat(1 / diag(P)), P = gram^-1 (the regularisation already on its diagonal),
    zero diagonal; FitError naming the source when it cannot be inverted or is not finite."""
    with threadpool_limits(limits=threads, user_api="blas"):
        try:
            p = np.linalg.inv(gram)
        except np.linalg.LinAlgError as e:
            raise FitError(source, f"{what} is singular ({e})") from e
    b: npt.NDArray[np.float64] = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    if not np.isfinite(b).all():
        raise FitError(source, f"{what} gives non-finite weights")
    return b


def table(weights: npt.NDArray[np.floating], items: Rows, n_items: int, neighbours: int) -> NeighbourTable:
    """The dense (len(items), len(items)) weights as a catalogue-wide table of `neighbours` per row."""
    return placed(NeighbourTable.from_matrix(weights.astype(np.float32), neighbours), items, n_items)


def placed(table: NeighbourTable, items: Rows, n_items: int) -> NeighbourTable:
    """A table over the rows `items` (local rows and indices 0..len(items)-1) as one over the whole
    catalogue: the other items get empty rows."""
    counts = np.zeros(n_items, dtype=np.int64)
    counts[items] = np.diff(table.indptr)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return NeighbourTable(indptr, items[table.indices].astype(np.int32), table.weights, n_items)
