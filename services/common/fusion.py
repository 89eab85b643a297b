"""Candidates from several sources, fused: what the retrieval service serves and the trainer trains on.

Every allowed source lists its best `depth` items for the user (none of them excluded); reciprocal-rank
fusion over the `fused` ones orders their union, score(j) = sum over fused sources s of
1 / (k + rank_s(j) + 1) (a source that did not list j adds nothing), ties by item row; the best n are
the candidates, topped up with popular items when the fused sources offer fewer (a cold user). Then
every source that ran scores every candidate, so the ranker sees each candidate through every source:
its score, its rank in that source's own list (NaN past `depth`), and the source's best score for the
user. The columns are float32 throughout, as they travel in `recsys.v1.Candidates`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.common.sources.base import EMPTY_ROWS, F32, History, Rows, Source, exclusion

POPULAR = "popular"


@dataclass(frozen=True)
class FusionParams:
    fused: tuple[str, ...] = ("ease", "cooc", "als", "seq")
    k: float = 60.0
    depth: int = 300
    candidates: int = 100


@dataclass(frozen=True)
class SourceColumn:
    scores: F32  # the source's score of each candidate
    ranks: F32  # 0-based rank in the source's own list, NaN when it did not list the candidate
    best: float  # the source's best score for this user (NaN when it listed nothing)


@dataclass(frozen=True)
class CandidateColumns:
    """n candidates (item rows), best first by the fused score, with one column per source that ran."""

    rows: Rows
    fused: F32
    #: which source proposed each candidate (its best-ranked fused source, or `popular` for a top-up)
    origin: list[str]
    columns: dict[str, SourceColumn]

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def generate(
    sources: Mapping[str, Source],
    history: History,
    n: int,
    fusion: FusionParams,
    exclude: Rows = EMPTY_ROWS,
    allowed: Sequence[str] = (),
) -> CandidateColumns:
    """The fused candidates of one user; `allowed` (empty: every source) limits the sources that run.
    The user's own history is always excluded."""
    names = [s for s in sources if not allowed or s in allowed]
    excluded = exclusion(exclude, history.as_set)
    queries = {s: sources[s].scores(history) for s in names}
    listed: dict[str, Rows] = {}
    best: dict[str, float] = {}
    for s in names:
        rows, values = queries[s].top(fusion.depth, excluded)
        listed[s] = rows
        best[s] = float(values[0]) if rows.size else float("nan")
    # An arm that allows none of the fused sources fuses the ones it allows (popular only tops up).
    fused_names = [s for s in fusion.fused if s in listed] or [s for s in listed if s != POPULAR]
    rows, scores = _fuse([listed[s] for s in fused_names], fusion.k, n)
    if rows.size < n and POPULAR in queries:
        more, _ = queries[POPULAR].top(n - rows.size, exclusion(excluded, rows))
        # below every fused score, in popular order
        rows = np.concatenate([rows, more])
        scores = np.concatenate([scores, -np.arange(1, more.size + 1, dtype=np.float32)])
    ranks = _ranks([listed[s] for s in names], rows)
    columns = {
        s: SourceColumn(queries[s].at(rows).astype(np.float32), ranks[i], best[s])
        for i, s in enumerate(names)
    }
    # each candidate's origin: the fused source that ranked it best (the first on a tie), else a top-up
    fused_ranks = [ranks[names.index(s)] for s in fused_names]
    if fused_ranks and rows.size:
        stacked = np.nan_to_num(np.stack(fused_ranks), nan=np.inf)
        best_list = np.argmin(stacked, axis=0)
        listed_any = np.isfinite(stacked.min(axis=0))
        origin = [
            fused_names[b] if ok else POPULAR
            for b, ok in zip(best_list.tolist(), listed_any.tolist(), strict=True)
        ]
    else:
        origin = [POPULAR] * rows.size
    return CandidateColumns(rows, scores, origin, columns)


def _fuse(lists: list[Rows], k: float, n: int) -> tuple[Rows, npt.NDArray[np.float32]]:
    """The best n rows of the union of `lists` by reciprocal-rank score (ties by row), and their scores."""
    if not any(r.size for r in lists):
        return EMPTY_ROWS, np.empty(0, dtype=np.float32)
    every = np.concatenate(lists)
    rank = np.concatenate([np.arange(r.size, dtype=np.float64) for r in lists])
    union, inverse = np.unique(every, return_inverse=True)
    # the contributions of each row added in list order, so every caller gets the same floats
    fused = np.bincount(inverse, weights=1.0 / (k + rank + 1.0), minlength=union.size)
    order = np.argsort(-fused, kind="stable")[:n]  # the union is sorted: ties stay by row
    return union[order].astype(np.int64), fused[order].astype(np.float32)


def _ranks(lists: list[Rows], rows: Rows) -> list[npt.NDArray[np.float32]]:
    """For each list, the 0-based position of each of `rows` in it (NaN where absent)."""
    out = [np.full(rows.size, np.nan, dtype=np.float32) for _ in lists]
    sizes = [r.size for r in lists]
    if not rows.size or not sum(sizes):
        return out
    span = int(max(int(rows.max()), max(int(r.max()) for r in lists if r.size))) + 1
    keys = np.concatenate([i * span + r for i, r in enumerate(lists)])
    positions = np.concatenate([np.arange(size, dtype=np.float32) for size in sizes])
    sorter = np.argsort(keys, kind="stable")
    for i in range(len(lists)):
        if not sizes[i]:
            continue
        wanted = i * span + rows
        pos = np.minimum(np.searchsorted(keys, wanted, sorter=sorter), keys.size - 1)
        hit = keys[sorter[pos]] == wanted
        out[i][hit] = positions[sorter[pos[hit]]]
    return out
