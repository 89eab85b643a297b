"""Item-to-item sources: a sparse table of each item's strongest neighbours, summed over a history.

A table holds, for every item row i, the items j it points to and the weight W[i, j] (CSR: row i's
neighbours are indices[indptr[i]:indptr[i + 1]]). A user's score for item j is the sum of W[i, j] over
the items i of their history (or of their latest few, for a source of recent interest). Only linked
items get a score; the cost of a query is the history's entries, never the catalogue, so a table of a
million items answers as fast as one of a thousand. Fitting (EASE, co-occurrence, RP3beta, sequences)
differs per source; storing, loading and scoring are here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.sources.base import (
    EMPTY_ROWS,
    EMPTY_SCORES,
    F32,
    History,
    Rows,
    Source,
    UserScores,
    ranked,
    without,
)


@dataclass(frozen=True)
class NeighbourTable:
    """Rows (history items, or other keys such as time units) pointing to target items with weights."""

    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int32]
    weights: F32
    #: how many target items there are (the catalogue); the rows are the table's own
    n_targets: int

    @property
    def n_rows(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def entries(self) -> int:
        return int(self.indices.shape[0])

    @classmethod
    def from_matrix(cls, weights: npt.NDArray[Any] | sp.spmatrix, keep: int) -> NeighbourTable:
        """Each row's `keep` nonzero weights of largest magnitude (all of them when keep >= the row's
        count: a strong negative weight says as much as a strong positive one), from a dense array or a
        sparse matrix; within a row, by magnitude, largest first (ties by column)."""
        if not sp.issparse(weights):
            return cls._from_dense(np.asarray(weights, dtype=np.float32), keep)
        csr = sp.csr_matrix(weights, dtype=np.float32)
        csr.eliminate_zeros()
        csr.sort_indices()
        counts = np.diff(csr.indptr)
        rows = np.repeat(np.arange(csr.shape[0]), counts)
        order = np.lexsort((csr.indices, -np.abs(csr.data), rows))  # per row: largest first, ties by column
        position = np.arange(order.size) - csr.indptr[rows[order]]
        kept = order[position < keep]
        indptr = np.concatenate([[0], np.cumsum(np.minimum(counts, keep))]).astype(np.int64)
        return cls(
            indptr, csr.indices[kept].astype(np.int32), csr.data[kept].astype(np.float32), csr.shape[1]
        )

    @classmethod
    def _from_dense(cls, dense: F32, keep: int) -> NeighbourTable:
        n_rows, n_cols = dense.shape
        keep = min(keep, n_cols)
        indptr = [0]
        indices: list[npt.NDArray[np.int32]] = []
        weights: list[F32] = []
        for start in range(0, n_rows, 1024):  # bounded temporaries
            block = dense[start : start + 1024]
            if keep < n_cols:
                part = np.argpartition(-np.abs(block), keep - 1, axis=1)[:, :keep]
            else:
                part = np.broadcast_to(np.arange(n_cols), block.shape)
            values = np.take_along_axis(block, part, axis=1)
            for r in range(block.shape[0]):
                nonzero = values[r] != 0
                cols, vals = part[r][nonzero], values[r][nonzero]
                order = np.lexsort((cols, -np.abs(vals)))
                indices.append(cols[order].astype(np.int32))
                weights.append(vals[order].astype(np.float32))
                indptr.append(indptr[-1] + int(order.size))
        return cls(
            np.asarray(indptr, dtype=np.int64),
            np.concatenate(indices) if indices else np.empty(0, np.int32),
            np.concatenate(weights) if weights else np.empty(0, np.float32),
            n_cols,
        )

    def sums(self, rows: Rows) -> tuple[Rows, F32]:
        """(linked rows sorted, summed weights) over the given item rows, in their order. The sums are
        float64 additions in that order, whatever the catalogue size, so the same rows give the same
        floats everywhere."""
        if rows.size == 0:
            return EMPTY_ROWS, EMPTY_SCORES
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        ends = np.cumsum(lengths)
        total = int(ends[-1])
        if total == 0:
            return EMPTY_ROWS, EMPTY_SCORES
        at = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        targets = self.indices[at]
        values = self.weights[at]  # bincount adds them as float64
        if total * 4 >= self.n_targets:  # dense bins are cheaper than sorting the entries
            summed = np.bincount(targets, weights=values, minlength=self.n_targets)
            hit = np.zeros(self.n_targets, dtype=bool)
            hit[targets] = True
            linked = np.flatnonzero(hit).astype(np.int64)
            return linked, summed[linked].astype(np.float32)
        linked, inverse = np.unique(targets, return_inverse=True)
        return linked.astype(np.int64), np.bincount(inverse, weights=values).astype(np.float32)

    def save(self, path: Path) -> None:
        with path.open("wb") as f:
            np.savez(f, indptr=self.indptr, indices=self.indices, weights=self.weights)

    @classmethod
    def load(cls, path: Path, n_rows: int, n_targets: int, what: str) -> NeighbourTable:
        """Read and check the arrays; ArtifactError naming what is wrong."""
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = {"indptr", "indices", "weights"} - set(z.files)
                if missing:
                    raise ArtifactError(f"{what}: {path.name} lacks {sorted(missing)}")
                indptr = z["indptr"].astype(np.int64)
                indices = z["indices"].astype(np.int32)
                weights = z["weights"].astype(np.float32)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{what}: cannot read {path.name} ({e})") from e
        if indptr.shape != (n_rows + 1,):
            raise ArtifactError(f"{what}: {path.name} has {indptr.shape[0] - 1} rows, expected {n_rows}")
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
            raise ArtifactError(
                f"{what}: {path.name}: indptr is not a row pointer over {len(indices)} entries"
            )
        if len(weights) != len(indices):
            raise ArtifactError(f"{what}: {path.name}: {len(indices)} indices but {len(weights)} weights")
        if len(indices) and (indices.min() < 0 or indices.max() >= n_targets):
            raise ArtifactError(f"{what}: {path.name}: a target is outside item rows 0..{n_targets - 1}")
        if not np.isfinite(weights).all():
            raise ArtifactError(f"{what}: {path.name} holds non-finite weights")
        return cls(indptr, indices, weights, n_targets)


@dataclass(frozen=True)
class LinkedScores:
    """Scores of the items a history links to; every other item scores 0 and is never proposed."""

    linked: Rows  # sorted
    values: F32

    def top(self, n: int, exclude: Rows) -> tuple[Rows, F32]:
        keep = without(self.linked, exclude)
        return ranked(self.linked[keep], self.values[keep], n, rows_sorted=True)

    def at(self, rows: Rows) -> F32:
        out = np.zeros(rows.shape[0], dtype=np.float32)
        if self.linked.size:
            pos = np.minimum(np.searchsorted(self.linked, rows), self.linked.size - 1)
            hit = self.linked[pos] == rows
            out[hit] = self.values[pos[hit]]
        return out


class TableSource(Source):
    """A source whose fitted state is one `NeighbourTable`; subclasses implement `fit` (and may weigh
    the history differently through `query_rows`)."""

    def __init__(self, params: Any, table: NeighbourTable) -> None:
        super().__init__(params)
        self.table = table

    @classmethod
    @abc.abstractmethod
    def fit(cls, data: Any, params: Any) -> TableSource: ...

    def query_rows(self, history: History) -> Rows:
        """The history rows whose neighbours are summed: the whole history by default."""
        return history.scored

    def scale(self) -> float:
        return 1.0

    def scores(self, history: History) -> UserScores:
        linked, values = self.table.sums(self.query_rows(history))
        if self.scale() != 1.0:
            values = (values * np.float32(self.scale())).astype(np.float32)
        return LinkedScores(linked, values)

    def save(self, directory: Path) -> None:
        self.table.save(directory / self.file("table.npz"))

    @classmethod
    def load(cls, version: ArtifactVersion, n_items: int) -> TableSource:
        what = f"artifact {version.version}: source {cls.name}"
        path = version.file(f"{cls.name}.table.npz")
        return cls(cls.params_from(version), NeighbourTable.load(path, n_items, n_items, what))
