"""Content: the user's mean content vector (genres and tags) against each item's, by cosine.

Item vectors come from the trainer (services.trainer.content: genres and the TF-IDF of the tags a slice
may know, each part L2-normalised); the only source that scores items nobody has interacted with, so
it is the path for cold items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.sources.base import F32, FitData, FitError, History
from services.common.sources.vectors import VectorSource


@dataclass(frozen=True)
class ContentParams:
    index: str = "auto"
    recall_target: float = 0.95


class Content(VectorSource):
    name = "content"
    Params = ContentParams

    @classmethod
    def fit(cls, data: FitData, params: ContentParams) -> Content:
        vectors = np.ascontiguousarray(data.content, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != data.n_items or vectors.shape[1] == 0:
            raise FitError(cls.name, f"needs (items, d) content vectors, got shape {vectors.shape}")
        return cls.over(params, vectors, data)

    def query(self, history: History) -> F32 | None:
        rows = history.scored
        if rows.size == 0:
            return None
        profile = self.vectors[rows].astype(np.float64).sum(axis=0)
        norm = float(np.linalg.norm(profile))
        if norm == 0:
            return None
        out: F32 = (profile / norm).astype(np.float32)
        return out
