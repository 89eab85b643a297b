"""Popularity: the items most interacted with in the slice (optionally decayed with age), the same
for every user, so it answers users without any history and tops up short candidate lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.sources.base import F32, FitData, FitError, History, Rows, Source, UserScores, without

DAY = 86_400.0


@dataclass(frozen=True)
class PopularityParams:
    #: 0: plain counts; else each interaction counts 2^(-age / half-life) at the slice's end
    half_life_days: float = 0.0


@dataclass(frozen=True)
class PopularScores:
    counts: F32
    order: Rows  # every row, most popular first (ties by row)

    def top(self, n: int, exclude: Rows) -> tuple[Rows, F32]:
        # the first n + len(exclude) of the order always hold the n best not excluded
        head = self.order[: n + exclude.size]
        rows = head[without(head, exclude)][:n]
        return rows, self.counts[rows]

    def at(self, rows: Rows) -> F32:
        return self.counts[rows]


class Popularity(Source):
    name = "popular"
    Params = PopularityParams

    def __init__(self, params: PopularityParams, counts: F32) -> None:
        super().__init__(params)
        self.counts = np.ascontiguousarray(counts, dtype=np.float32)
        self._scores = PopularScores(self.counts, np.lexsort((np.arange(self.counts.size), -self.counts)))

    @classmethod
    def fit(cls, data: FitData, params: PopularityParams) -> Popularity:
        if params.half_life_days < 0:
            raise FitError(cls.name, f"half_life_days must be >= 0, got {params.half_life_days}")
        # distinct (user, item) pairs, as every other source counts them
        pairs = np.unique(data.event_users * data.n_items + data.event_items, return_index=True)[1]
        items, times = data.event_items[pairs], data.event_times[pairs]
        weights = np.ones(items.size)
        if params.half_life_days > 0 and times.size:
            weights = np.exp2(-(times.max() - times) / (params.half_life_days * DAY))
        return cls(params, np.bincount(items, weights=weights, minlength=data.n_items).astype(np.float32))

    def save(self, directory: Path) -> None:
        np.save(directory / self.file("counts.npy"), self.counts)

    @classmethod
    def load(cls, version: ArtifactVersion, n_items: int) -> Popularity:
        what = f"artifact {version.version}: source {cls.name}"
        try:
            counts = np.load(version.file(f"{cls.name}.counts.npy"), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{what}: cannot read {cls.name}.counts.npy ({e})") from e
        if counts.shape != (n_items,) or not np.isfinite(counts).all():
            raise ArtifactError(
                f"{what}: {cls.name}.counts.npy must be {n_items} finite counts, got {counts.shape}"
            )
        return cls(cls.params_from(version), counts)

    def scores(self, history: History) -> UserScores:
        return self._scores
