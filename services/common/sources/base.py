"""What every candidate source is: fitted on a slice of the log, saved into an artifact version, loaded
by the retrieval service, and asked for one user's scores.

    fit(FitData, params) -> source        the trainer, on one slice of the log (services/trainer)
    source.save(directory)                 files named `<source>.<part>` in the version being written
    Source.load(version, n_items)          the retrieval service (and the trainer's own checks)
    source.scores(history) -> UserScores   one user: `top(n, exclude)` and `at(rows)`

Item rows are the rows of the artifact version's catalogue (`item_ids.json`). The trainer's evaluation
asks the fitted objects exactly what the retrieval service asks the loaded ones, one user at a time,
so a number measured offline is the number served. `tests/unit/test_sources_contract.py` holds every
source to that, and to: excluded items never returned, a user without history handled, and a save /
load round trip that changes nothing.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.content_space import ContentSpace

Rows = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

EMPTY_ROWS: Rows = np.empty(0, dtype=np.int64)
EMPTY_SCORES: F32 = np.empty(0, dtype=np.float32)


class FitError(ValueError):
    """A source cannot be fitted on this data; the message names the source and the reason."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"source {source}: {problem}")
        self.source = source


#: Sources score from at most this many of the user's most recent items: a user with thousands costs a
#: request no more than one with this many (every item of the history is still excluded).
HISTORY_LIMIT = 500


@dataclass(frozen=True)
class History:
    """One user's items as rows of the catalogue: distinct, most recent first. A user without history
    (cold) has none. `recent(n)` keeps the order; `scored` (what a source sums over) and `as_set` (what
    is excluded) are sorted, so that a source adds in the same order however the history was assembled
    (the trainer's log, or the features service's recent and seen lists)."""

    items: Rows

    @classmethod
    def of(cls, items: npt.ArrayLike) -> History:
        rows = np.asarray(items, dtype=np.int64).reshape(-1)
        _, first = np.unique(rows, return_index=True)
        return cls(rows[np.sort(first)])

    @functools.cached_property
    def as_set(self) -> Rows:
        out: Rows = np.sort(self.items)
        return out

    @functools.cached_property
    def scored(self) -> Rows:
        out: Rows = np.sort(self.items[:HISTORY_LIMIT])
        return out

    def recent(self, n: int) -> Rows:
        return self.items[:n]

    def __len__(self) -> int:
        return int(self.items.shape[0])


class UserScores(Protocol):
    """A source's scores for one user."""

    def top(self, n: int, exclude: Rows) -> tuple[Rows, F32]:
        """The best `n` rows not in `exclude` (sorted), best first, with their scores; fewer when the
        source has fewer to offer (a user without history gets none from a history-based source)."""
        ...

    def at(self, rows: Rows) -> F32:
        """The score of each of `rows` (what `top` would have said of it)."""
        ...


@dataclass(frozen=True)
class FitData:
    """One slice of the log, as sources fit on it. Rows and columns are fixed by the catalogue and the
    users of the split, whether or not they appear in this slice."""

    #: (users, items) float32, 1 where the user interacted
    matrix: sp.csr_matrix
    #: every interaction of the slice in time order (ties in log order): its user row and item row
    event_users: Rows
    event_items: Rows
    event_times: npt.NDArray[np.float64]
    #: (items, d) L2-normalised content vectors (genres, tags this slice may know); zero rows for none
    content: F32
    #: how those vectors are made from an item's genres and tags (what serving needs for a new item)
    content_space: ContentSpace
    seed: int = 42
    threads: int = 2

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[1])

    def histories(self) -> list[History]:
        """The histories of the users with any interaction in the slice (items in row order)."""
        indptr, indices = self.matrix.indptr, self.matrix.indices
        rows = [indices[indptr[u] : indptr[u + 1]].astype(np.int64) for u in range(self.matrix.shape[0])]
        return [History(r) for r in rows if r.size]

    def item_counts(self) -> npt.NDArray[np.float64]:
        counts: npt.NDArray[np.float64] = np.asarray(self.matrix.sum(axis=0), dtype=np.float64).reshape(-1)
        return counts


class Source(abc.ABC):
    """A candidate source. Subclasses set `name` (the registry key, the prefix of their files and
    features) and `Params` (a frozen dataclass of their settings, defaults as chosen on validation)."""

    name: ClassVar[str]
    Params: ClassVar[type[Any]]

    def __init__(self, params: Any) -> None:
        self.params = params

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this source cannot be fitted in this environment (an optional extra not installed), in
        one line; None when it can. Checked before any fit, so a pipeline fails before its work starts."""
        return None

    @classmethod
    @abc.abstractmethod
    def fit(cls, data: FitData, params: Any) -> Source:
        """Fit on one slice; FitError (naming the source) when it cannot."""

    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        """Write this source's files (`<name>.*`) into `directory`."""

    @classmethod
    @abc.abstractmethod
    def load(cls, version: ArtifactVersion, n_items: int) -> Source:
        """Read this source's files from a checksum-verified version; ArtifactError naming what is wrong."""

    @abc.abstractmethod
    def scores(self, history: History) -> UserScores: ...

    def file(self, part: str) -> str:
        return f"{self.name}.{part}"

    @classmethod
    def params_from(cls, version: ArtifactVersion) -> Any:
        """This source's Params as the manifest records them (pipeline.sources)."""
        recorded = ((version.manifest.get("pipeline") or {}).get("source_params") or {}).get(cls.name)
        if not isinstance(recorded, Mapping):
            raise ArtifactError(
                f"artifact {version.version}: manifest has no parameters for source {cls.name}"
            )
        known = {f.name for f in dataclasses.fields(cls.Params)}
        try:
            return cls.Params(**{k: v for k, v in recorded.items() if k in known})
        except TypeError as e:
            raise ArtifactError(f"artifact {version.version}: source {cls.name} parameters: {e}") from e


def ranked(rows: Rows, scores: F32, n: int, rows_sorted: bool = False) -> tuple[Rows, F32]:
    """The best `n` of (rows, scores): by score descending, ties by row ascending (deterministic).
    `rows_sorted`: the rows are ascending already, so a stable sort by score alone breaks the ties."""
    if n <= 0 or rows.size == 0:
        return EMPTY_ROWS, EMPTY_SCORES
    if rows.size > n:
        # a partition first: only the n best (and every row tied with the n-th) are sorted
        cut = -np.partition(-scores, n - 1)[n - 1]
        keep = scores >= cut
        rows, scores = rows[keep], scores[keep]
    order = (np.argsort(-scores, kind="stable") if rows_sorted else np.lexsort((rows, -scores)))[:n]
    return rows[order], scores[order]


def without(rows: Rows, exclude: Rows) -> npt.NDArray[np.bool_]:
    """Mask of `rows` not in `exclude` (sorted)."""
    if exclude.size == 0:
        return np.ones(rows.shape[0], dtype=bool)
    pos = np.minimum(np.searchsorted(exclude, rows), exclude.size - 1)
    out: npt.NDArray[np.bool_] = exclude[pos] != rows
    return out


def exclusion(*parts: Rows) -> Rows:
    """One sorted, distinct exclusion array from several."""
    nonempty = [p for p in parts if p.size]
    if not nonempty:
        return EMPTY_ROWS
    out: Rows = np.unique(np.concatenate(nonempty)).astype(np.int64)
    return out
