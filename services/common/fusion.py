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
    listed = {s: queries[s].top(max(fusion.depth, n), excluded)[0] for s in names}
    # An arm that allows none of the fused sources fuses the ones it allows (popular only tops up).
    fused_names = [s for s in fusion.fused if s in listed] or [s for s in listed if s != POPULAR]
    union = np.unique(np.concatenate([listed[s] for s in fused_names])) if fused_names else EMPTY_ROWS
    fused = np.zeros(union.size, dtype=np.float64)
    best_rank = np.full(union.size, np.inf)
    origin_of = np.full(union.size, -1, dtype=np.int64)
    for index, s in enumerate(fused_names):
        rows = listed[s]
        pos = np.searchsorted(union, rows)
        ranks = np.arange(rows.size, dtype=np.float64)
        fused[pos] += 1.0 / (fusion.k + ranks + 1.0)
        better = ranks < best_rank[pos]
        best_rank[pos[better]] = ranks[better]
        origin_of[pos[better]] = index
    order = np.lexsort((union, -fused))[:n]
    rows, scores = union[order], fused[order].astype(np.float32)
    origin = [fused_names[i] for i in origin_of[order]]
    if rows.size < n and POPULAR in queries:
        more, _ = queries[POPULAR].top(n - rows.size, exclusion(excluded, rows))
        # below every fused score, in popular order
        rows = np.concatenate([rows, more])
        scores = np.concatenate([scores, -np.arange(1, more.size + 1, dtype=np.float32)])
        origin += [POPULAR] * more.size
    columns: dict[str, SourceColumn] = {}
    for s in names:
        own = listed[s][: fusion.depth]
        rank = np.full(rows.size, np.nan, dtype=np.float32)
        if own.size and rows.size:
            sorter = np.argsort(own, kind="stable")
            pos = np.minimum(np.searchsorted(own, rows, sorter=sorter), own.size - 1)
            hit = own[sorter[pos]] == rows
            rank[hit] = sorter[pos[hit]].astype(np.float32)
        best = float(queries[s].at(own[:1])[0]) if own.size else float("nan")
        columns[s] = SourceColumn(queries[s].at(rows).astype(np.float32), rank, best)
    return CandidateColumns(rows.astype(np.int64), scores.astype(np.float32), origin, columns)
