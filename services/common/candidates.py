"""The `Candidates` message (candidates in columns) built and read the same way by every stage.

Retrieval turns its fused `CandidateColumns` (services.common.fusion) into one (`to_proto`); ranking
reads it back (`from_proto`) over its own item rows, so both sides hold exactly the same float32
columns; ranking and the gateway turn chosen positions into `ScoredItem`s for the response. Only the
few returned items ever become messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from recsys.v1 import common_pb2
from services.common.fusion import CandidateColumns, SourceColumn
from services.common.rpc import MAX_ID_LENGTH, require, require_id


def to_proto(candidates: CandidateColumns, item_ids: npt.NDArray[np.object_]) -> common_pb2.Candidates:
    """`candidates` as a message; `item_ids[row]` is the id of item row `row`."""
    names = list(dict.fromkeys(candidates.origin))
    index = {name: i for i, name in enumerate(names)}
    out = common_pb2.Candidates(
        item_ids=item_ids[candidates.rows].tolist(),
        scores=candidates.fused.tolist(),
        source_names=names,
        sources=[index[o] for o in candidates.origin],
    )
    for name, column in candidates.columns.items():
        out.columns.append(
            common_pb2.SourceColumn(
                source=name, scores=column.scores.tolist(), ranks=column.ranks.tolist(), best=column.best
            )
        )
    return out


def from_proto(message: common_pb2.Candidates, rows: npt.NDArray[np.int64]) -> CandidateColumns:
    """The columns of a (validated) message; `rows` are its items' rows on the reading side."""
    names = list(message.source_names)
    origin = [names[i] for i in message.sources] if message.sources else [""] * len(message.item_ids)
    return CandidateColumns(
        rows,
        np.asarray(message.scores, dtype=np.float32),
        origin,
        {
            c.source: SourceColumn(
                np.asarray(c.scores, dtype=np.float32), np.asarray(c.ranks, dtype=np.float32), float(c.best)
            )
            for c in message.columns
        },
    )


def validate(candidates: common_pb2.Candidates, field: str = "candidates") -> None:
    """Raise InvalidArgument naming the first malformed part of a Candidates message a caller sent."""
    n = len(candidates.item_ids)
    require(
        len(candidates.scores) == n, f"{field}.scores", f"{len(candidates.scores)} values for {n} item_ids"
    )
    require(
        len(candidates.sources) in (0, n),
        f"{field}.sources",
        f"{len(candidates.sources)} values for {n} item_ids (0 or one per item)",
    )
    if candidates.sources:
        largest = max(candidates.sources)
        require(
            largest < len(candidates.source_names),
            f"{field}.sources",
            f"refers to source_names[{largest}], which does not exist",
        )
    seen: set[str] = set()
    for i, column in enumerate(candidates.columns):
        where = f"{field}.columns[{i}]"
        require(
            bool(column.source) and column.source not in seen, f"{where}.source", "must be set and distinct"
        )
        seen.add(column.source)
        require(len(column.scores) == n, f"{where}.scores", f"{len(column.scores)} values for {n} item_ids")
        require(len(column.ranks) == n, f"{where}.ranks", f"{len(column.ranks)} values for {n} item_ids")
    ids = candidates.item_ids
    # C-speed scans first; the per-id check only runs to name the first bad id
    if ids and ("" in ids or any(map(str.isspace, ids)) or max(map(len, ids)) > MAX_ID_LENGTH):
        for i, item in enumerate(ids):
            require_id(item, f"{field}.item_ids[{i}]")


def source_of(candidates: common_pb2.Candidates, position: int) -> str:
    return candidates.source_names[candidates.sources[position]] if candidates.sources else ""


def scored_items(
    candidates: common_pb2.Candidates,
    positions: Iterable[int],
    scores: Sequence[float] | None = None,
) -> list[common_pb2.ScoredItem]:
    """ScoredItems for `positions` of `candidates`, with their own scores or `scores` (by position)."""
    return [
        common_pb2.ScoredItem(
            item_id=candidates.item_ids[p],
            score=candidates.scores[p] if scores is None else float(scores[p]),
            source=source_of(candidates, p),
        )
        for p in positions
    ]


def head(candidates: common_pb2.Candidates, k: int) -> list[common_pb2.ScoredItem]:
    """The first k candidates as ScoredItems (retrieval order: best first)."""
    return scored_items(candidates, range(min(k, len(candidates.item_ids))))
