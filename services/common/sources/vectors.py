"""Sources that score by inner product in a vector space: one vector per item (searched with FAISS,
services.common.ann), and a query vector computed from the user's history at request time, so a live
click moves the query at once. Subclasses say how the query is made (`query`)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import faiss
import numpy as np

from services.common.ann import VectorIndex, build_index
from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.sources.base import (
    EMPTY_ROWS,
    EMPTY_SCORES,
    F32,
    FitData,
    History,
    Rows,
    Source,
    UserScores,
    ranked,
)

#: Sample queries an approximate index is tuned on (recall against exact search).
TUNING_QUERIES = 200


@dataclass(frozen=True)
class VectorScores:
    query: F32 | None
    vectors: F32
    index: VectorIndex

    def top(self, n: int, exclude: Rows) -> tuple[Rows, F32]:
        if self.query is None:
            return EMPTY_ROWS, EMPTY_SCORES
        rows = self.index.search(self.query, n, exclude)
        # the scores, and so the order, from the same product `at` computes: one number per item
        return ranked(rows, self.at(rows), n)

    def at(self, rows: Rows) -> F32:
        if self.query is None:
            return np.zeros(rows.shape[0], dtype=np.float32)
        out: F32 = (self.vectors[rows] @ self.query).astype(np.float32)
        return out


class VectorSource(Source):
    def __init__(self, params: Any, vectors: F32, index: Any, index_info: dict[str, Any]) -> None:
        super().__init__(params)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = VectorIndex(index, self.vectors.shape[0])
        self.index_info = index_info

    @abc.abstractmethod
    def query(self, history: History) -> F32 | None:
        """The user's query vector; None when the history gives none (a cold user)."""

    def scores(self, history: History) -> UserScores:
        return VectorScores(self.query(history), self.vectors, self.index)

    @classmethod
    def over(cls, params: Any, vectors: F32, data: FitData) -> Self:
        """An instance over `vectors` with the index `build_index` picks for the catalogue, tuned on the
        queries of the slice's users (made by the instance itself, so tuning sees what it will serve)."""
        return cls.indexed(params, vectors, data.histories(), params.index, params.recall_target, data.seed)

    @classmethod
    def indexed(
        cls, params: Any, vectors: F32, sample: list[History], kind: str, recall_target: float, seed: int
    ) -> Self:
        """An instance over `vectors` with the index of `kind`, tuned on the queries of `sample`."""
        return cls(params, vectors, flat_index(vectors), {"type": "flat"}).tuned(
            sample, kind, recall_target, seed
        )

    def tuned(self, sample: list[History], kind: str, recall_target: float, seed: int) -> Self:
        """This source over the index of `kind`, tuned on the queries this source makes of `sample`."""
        queries = [q for q in (self.query(h) for h in sample[:TUNING_QUERIES]) if q is not None]
        index, info = build_index(
            self.vectors, kind, np.stack(queries) if queries else None, recall_target=recall_target, seed=seed
        )
        return self.with_index(index, info)

    def with_index(self, index: Any, index_info: dict[str, Any]) -> Self:
        """This source over another index of the same vectors."""
        return type(self)(self.params, self.vectors, index, index_info)

    @classmethod
    def load(cls, version: ArtifactVersion, n_items: int) -> Self:
        vectors, index = cls.read(version, n_items)
        return cls(cls.params_from(version), vectors, index, {})

    def save(self, directory: Path) -> None:
        np.save(directory / self.file("vectors.npy"), self.vectors)
        faiss.write_index(self.index.index, str(directory / self.file("index.faiss")))

    @classmethod
    def read(cls, version: ArtifactVersion, n_items: int) -> tuple[F32, Any]:
        """The vectors and the index of this source, checked against each other and the catalogue."""
        what = f"artifact {version.version}: source {cls.name}"
        try:
            vectors = np.load(version.file(f"{cls.name}.vectors.npy"), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{what}: cannot read {cls.name}.vectors.npy ({e})") from e
        if vectors.ndim != 2 or vectors.shape[0] != n_items or vectors.dtype != np.float32:
            raise ArtifactError(
                f"{what}: {cls.name}.vectors.npy must be float32 ({n_items}, d), got {vectors.dtype} {vectors.shape}"
            )
        if not np.isfinite(vectors).all():
            raise ArtifactError(f"{what}: {cls.name}.vectors.npy holds non-finite values")
        try:
            index = faiss.read_index(str(version.file(f"{cls.name}.index.faiss")))
        except RuntimeError as e:
            raise ArtifactError(f"{what}: cannot read {cls.name}.index.faiss ({e})") from e
        if int(index.ntotal) != n_items or int(index.d) != vectors.shape[1]:
            raise ArtifactError(
                f"{what}: {cls.name}.index.faiss holds {int(index.ntotal)} vectors of {int(index.d)} "
                f"dimensions, the vectors are {vectors.shape}"
            )
        if int(index.metric_type) != faiss.METRIC_INNER_PRODUCT:
            raise ArtifactError(f"{what}: {cls.name}.index.faiss must use inner product")
        return vectors, index


def flat_index(vectors: F32) -> Any:
    """Exact inner-product search over `vectors`."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index
