"""Recent interest: co-occurrence neighbours of the user's latest few items only.

The mean, over the user's `window` most recent items, of their co-occurrence similarity to each
target (services.common.sources.cooccurrence): what the whole history dilutes, a live click shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.sources.base import FitData, FitError, History, Rows
from services.common.sources.cooccurrence import similarity
from services.common.sources.tables import TableSource


@dataclass(frozen=True)
class RecentParams:
    window: int = 10
    neighbours: int = 200
    shrinkage: float = 0.0


class Recent(TableSource):
    name = "recent"
    Params = RecentParams

    @classmethod
    def fit(cls, data: FitData, params: RecentParams) -> Recent:
        if params.window < 1:
            raise FitError(cls.name, f"window must be >= 1, got {params.window}")
        return cls(params, similarity(data, params.neighbours, params.shrinkage, cls.name))

    def query_rows(self, history: History) -> Rows:
        return history.recent(self.params.window)

    def scale(self) -> float:
        return 1.0 / float(self.params.window)
