"""The `Candidates` message (candidates in columns) built and read the same way by every stage.

Retrieval builds one from blocks of (item ids, scores, source); ranking and the gateway turn chosen
positions back into `ScoredItem`s for the response. Only the few returned items ever become messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from recsys.v1 import common_pb2
from services.common.rpc import MAX_ID_LENGTH, require, require_id

Block = tuple[Sequence[str], npt.ArrayLike, str]


def build(blocks: Iterable[Block]) -> common_pb2.Candidates:
    """Candidates from consecutive blocks of (item ids, scores, source name), in that order."""
    out = common_pb2.Candidates()
    for item_ids, scores, source in blocks:
        values = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(item_ids) != values.shape[0]:
            raise ValueError(f"{len(item_ids)} item ids but {values.shape[0]} scores for source {source!r}")
        if not item_ids:
            continue
        if source not in out.source_names:
            out.source_names.append(source)
        out.item_ids.extend(item_ids)
        out.scores.extend(values.tolist())
        out.sources.extend([list(out.source_names).index(source)] * len(item_ids))
    return out


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
