"""The item and user rows one pipeline fit works over, with their side information, and a slice of the
log turned into what the sources fit on (`FitData`).

Items: the dataset's catalogue (its metadata file and every item of the log), sorted by id; users: the
users of the log being fitted, sorted. Every slice the ranker learns on uses the same rows, so a
feature means the same thing on every slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.common.content_space import ContentSpace
from services.common.sources.base import FitData, History, Rows
from services.trainer.content import content_vectors, genre_vectors, tag_vectors
from services.trainer.data import Dataset, Log, Tags

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Universe:
    item_ids: list[str]
    user_ids: list[str]
    item_row: dict[str, int]
    user_row: dict[str, int]
    genres: F32  # (items, genres) one-hot, L2-normalised
    item_year: F64
    user_age: F64
    user_gender: F64  # 1 = M, 0 = F, NaN unknown
    user_occupation: F64  # category code, NaN unknown
    tags: Tags
    shown: Log  # shown-not-chosen impressions (Dataset.shown)
    # every (user, item) of the dataset's log, held-out ratings included: only to leave their tags out
    rated: frozenset[tuple[str, str]]
    titles: list[str]
    genre_names: list[str]

    @classmethod
    def build(cls, data: Dataset, log: Log) -> Universe:
        item_ids = sorted(set(data.catalog) | set(log.items.tolist()))
        user_ids = sorted(set(log.users.tolist()))
        names, genres = genre_vectors(item_ids, data.catalog)
        years = np.array([data.catalog[i].year if i in data.catalog else np.nan for i in item_ids])
        attrs = [data.user_attributes.get(u, {}) for u in user_ids]
        occupations = sorted({a["occupation"] for a in attrs if a.get("occupation")})
        code = {o: float(i) for i, o in enumerate(occupations)}
        return cls(
            item_ids,
            user_ids,
            {v: i for i, v in enumerate(item_ids)},
            {u: i for i, u in enumerate(user_ids)},
            genres,
            years.astype(np.float64),
            np.array([_number(a.get("age")) for a in attrs], dtype=np.float64),
            np.array(
                [{"M": 1.0, "F": 0.0}.get(a.get("gender", ""), np.nan) for a in attrs], dtype=np.float64
            ),
            np.array([code.get(a.get("occupation", ""), np.nan) for a in attrs], dtype=np.float64),
            data.tags,
            data.shown,
            data.rated_pairs() if len(data.tags) else frozenset(),
            [data.catalog[i].title if i in data.catalog else "" for i in item_ids],
            names,
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def rows(self, log: Log) -> tuple[Rows, Rows]:
        """(user rows, item rows) of every interaction of `log` (-1 where unknown)."""
        users = np.fromiter((self.user_row.get(u, -1) for u in log.users.tolist()), np.int64, len(log))
        items = np.fromiter((self.item_row.get(i, -1) for i in log.items.tolist()), np.int64, len(log))
        return users, items

    def fit_data(self, log: Log, seed: int, threads: int) -> FitData:
        """The sources' view of `log`, a slice of the log this universe was built on."""
        users, items = self.rows(log)
        keep = (users >= 0) & (items >= 0)
        users, items, times = users[keep], items[keep], log.timestamps[keep]
        matrix = sp.csr_matrix(
            (np.ones(users.size, dtype=np.float32), (users, items)), shape=(len(self.user_ids), self.n_items)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        tags = self.tags.known_to(log, self.rated) if len(self.tags) else self.tags
        tag_names, idf, tag_part = tag_vectors(self.item_ids, tags)
        space = ContentSpace(tuple(self.genre_names), tuple(tag_names), tuple(idf.tolist()))
        content = content_vectors(self.genres, tag_part)
        return FitData(matrix, users, items, times, content, space, seed, threads)

    def histories(self, log: Log) -> dict[str, History]:
        """Each user's history in `log`: distinct items, most recent first (the log is in time order,
        ties in file order; the later of two equal timestamps counts as more recent)."""
        users, items = self.rows(log)
        keep = (users >= 0) & (items >= 0)
        users, items = users[keep][::-1], items[keep][::-1]
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        bounds = np.flatnonzero(np.diff(users)) + 1
        out: dict[str, History] = {}
        for start, end in zip(np.r_[0, bounds], np.r_[bounds, users.size], strict=True):
            if end > start:
                user = self.user_ids[int(users[start])]
                out[user] = History.of(items[start:end])
        return out

    def ids(self, rows: Sequence[int] | Rows) -> list[str]:
        return [self.item_ids[int(r)] for r in rows]


def _number(raw: str | None) -> float:
    try:
        return float(raw) if raw else np.nan
    except ValueError:
        return np.nan
