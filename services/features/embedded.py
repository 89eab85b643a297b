"""The in-process online store (the default when no Redis URL is configured).

The served version is one immutable snapshot of numpy arrays and dicts, swapped in with a single
assignment. The event log (services.features.event_file) is a JSON-lines file: a batch is durable there
before anything of it is applied in memory, so the log and the live state both hold all of it or none.
On open the live state comes from the last checkpoint plus the lines after it; retention compacts the
file without touching the live state or what the trainer has not consumed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.artifacts import ArtifactVersion
from services.features.event_file import EventFile
from services.features.store import (
    EMPTY,
    IDEMPOTENCY_WINDOW_S,
    RECENT_MAX,
    BoolArray,
    Event,
    FloatArray,
    UserProfile,
    VersionNotServed,
    check_events,
    merge_recent,
    read_tables,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedConfig:
    #: The append-only JSON-lines event log.
    event_log: Path = Path("var/events.jsonl")
    #: Recent items per user (live feedback + history).
    recent_max: int = RECENT_MAX
    #: How long an event id is remembered.
    idempotency_window_s: int = IDEMPOTENCY_WINDOW_S
    #: Retention (`trim_events`): drop events older than this (0: any age) or beyond this many (0: any).
    events_max_age_s: float = 0.0
    events_max_len: int = 0
    #: Events between checkpoints of the live state (start-up reads only what follows the last).
    checkpoint_every: int = 1000


@dataclass(frozen=True)
class _Snapshot:
    version: str
    item_row: dict[str, int]
    item_features: FloatArray
    user_row: dict[str, int]
    user_features: FloatArray
    history: dict[str, list[str]]


def _build(version: ArtifactVersion) -> _Snapshot:
    t = read_tables(version)
    for array in (t.item_features, t.user_features):
        array.flags.writeable = False
    return _Snapshot(
        version=t.version,
        item_row={item: i for i, item in enumerate(t.item_ids)},
        item_features=t.item_features,
        user_row={user: i for i, user in enumerate(t.user_ids)},
        user_features=t.user_features,
        history=t.user_history,
    )


class EmbeddedStore:
    """`OnlineStore` in process memory with a JSON-lines event log."""

    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config
        self._snapshot: _Snapshot | None = None
        self._pinned: dict[str, _Snapshot] = {}
        self._recent: dict[str, list[str]] = {}
        self._seen: dict[str, set[str]] = {}
        #: Event ids written within the idempotency window -> when (epoch s), oldest first.
        self._written_ids: dict[str, float] = {}
        self._log_lock = asyncio.Lock()
        self._materialize_lock = asyncio.Lock()
        self._file = EventFile(config.event_log)
        self._since_checkpoint = 0
        self._replay()

    # ---- served version -------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        return None if self._snapshot is None else self._snapshot.version

    @property
    def item_dim(self) -> int:
        return 0 if self._snapshot is None else int(self._snapshot.item_features.shape[1])

    async def materialize(self, version: ArtifactVersion) -> bool:
        async with self._materialize_lock:
            if self._snapshot is not None and self._snapshot.version == version.version:
                return False
            snapshot = await asyncio.to_thread(_build, version)
            self._snapshot = snapshot  # one assignment: readers see the old or the new version
            return True

    async def pin(self, version: ArtifactVersion) -> None:
        async with self._materialize_lock:
            if version.version in self._pinned:
                return
            current = self._snapshot
            if current is not None and current.version == version.version:
                snapshot = current
            else:
                snapshot = await asyncio.to_thread(_build, version)
            self._pinned = {**self._pinned, version.version: snapshot}

    def unpin(self, name: str) -> None:
        self._pinned = {k: v for k, v in self._pinned.items() if k != name}

    def _snap(self, version: str) -> _Snapshot | None:
        snap = self._snapshot
        if not version or (snap is not None and snap.version == version):
            return snap
        pinned = self._pinned.get(version)
        if pinned is None:
            served = ([snap.version] if snap is not None else []) + sorted(self._pinned)
            raise VersionNotServed(version, served)
        return pinned

    # ---- reads ----------------------------------------------------------------------------------

    async def repair(self) -> list[str]:
        """Nothing to repair: the tables live in this process."""
        return []

    async def get_user(self, user_id: str, version: str = "") -> UserProfile:
        snap = self._snap(version)
        history = snap.history.get(user_id, []) if snap is not None else []
        row = snap.user_row.get(user_id) if snap is not None else None
        live = self._recent.get(user_id, [])
        seen = frozenset(history).union(self._seen.get(user_id, ()))
        return UserProfile(
            user_id=user_id,
            known=row is not None,
            values=snap.user_features[row] if snap is not None and row is not None else EMPTY,
            recent_item_ids=merge_recent(live, history, self.config.recent_max),
            seen_item_ids=seen,
            version=snap.version if snap is not None else "",
        )

    async def get_items(self, item_ids: Sequence[str], version: str = "") -> tuple[FloatArray, BoolArray]:
        snap = self._snap(version)
        if snap is None:
            return np.empty((len(item_ids), 0), dtype=np.float32), np.zeros(len(item_ids), dtype=bool)
        rows = np.fromiter((snap.item_row.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        found = rows >= 0
        out = np.full((len(item_ids), snap.item_features.shape[1]), np.nan, dtype=np.float32)
        out[found] = snap.item_features[rows[found]]
        return out, found

    # ---- events ---------------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> int:
        check_events(events)
        # Shielded: a cancelled caller must not leave a batch in the log but not in memory.
        return await asyncio.shield(asyncio.ensure_future(self._commit(events)))

    async def _commit(self, events: Sequence[Event]) -> int:
        async with self._log_lock:
            self._forget_old_ids(time.time())
            new: dict[str, Event] = {}
            for e in events:
                if e.event_id not in self._written_ids:
                    new.setdefault(e.event_id, e)
            if not new:
                return 0
            fresh, now = list(new.values()), time.time()
            # written_ms: when the id was first written, for the idempotency window after a restart.
            await asyncio.to_thread(self._file.append, [e.to_json() for e in fresh], int(now * 1000))
            self._apply(fresh, {e.event_id: now for e in fresh})  # only once the batch is durable in the log
            self._since_checkpoint += len(fresh)
            if self._since_checkpoint >= self.config.checkpoint_every:
                await self._checkpoint()
            return len(fresh)

    async def _checkpoint(self) -> None:
        """Under the log lock: the live state cannot change while it is written."""
        state = {
            "recent": self._recent,
            "seen": {user: sorted(items) for user, items in self._seen.items()},
            "ids": self._written_ids,
        }
        await asyncio.to_thread(self._file.checkpoint, state)
        self._since_checkpoint = 0

    def _forget_old_ids(self, now: float) -> None:
        horizon = now - self.config.idempotency_window_s
        while self._written_ids:
            oldest, written_at = next(iter(self._written_ids.items()))
            if written_at >= horizon:
                return
            del self._written_ids[oldest]

    def _apply(self, events: Sequence[Event], written_at: Mapping[str, float]) -> None:
        """The live state, and the ids remembered with when they were written (epoch s)."""
        limit = self.config.recent_max
        for event in events:
            self._written_ids[event.event_id] = written_at[event.event_id]
            if not event.type.interacts:
                continue
            recent = self._recent.setdefault(event.user_id, [])
            if event.item_id in recent:
                recent.remove(event.item_id)
            recent.insert(0, event.item_id)
            del recent[limit:]
            self._seen.setdefault(event.user_id, set()).add(event.item_id)

    async def read_events(self) -> list[Event]:
        async with self._log_lock:
            return [Event.from_json(r) for r in await asyncio.to_thread(self._file.records)]

    def _replay(self) -> None:
        """The live state: the checkpoint's, then the log lines after it (not the whole log)."""
        state, tail = self._file.recover()
        if state is not None:
            self._recent = {str(u): list(items) for u, items in state["recent"].items()}
            self._seen = {str(u): set(items) for u, items in state["seen"].items()}
            self._written_ids = {str(k): float(v) for k, v in state["ids"].items()}
        events = [Event.from_json(r) for r in tail]
        # A line logged before written_ms was counts as written now: remembered for a whole window.
        now_ms = time.time() * 1000
        written = {e.event_id: r.get("written_ms", now_ms) / 1000 for e, r in zip(events, tail, strict=True)}
        self._apply(events, written)
        self._written_ids = dict(sorted(self._written_ids.items(), key=lambda kv: kv[1]))
        self._since_checkpoint = len(tail)

    # ---- retention ------------------------------------------------------------------------------

    async def log_position(self) -> str:
        return str(self._file.seq)

    async def mark_consumed(self, position: str) -> None:
        if not position.isdigit() or int(position) > self._file.seq:
            raise ValueError(f"log position {position!r}: expected a seq in 0..{self._file.seq}")
        await asyncio.to_thread(self._file.mark_consumed, int(position))

    async def trim_events(self, now_s: float) -> int:
        if not (self.config.events_max_age_s or self.config.events_max_len):
            return 0
        async with self._log_lock:
            await self._checkpoint()  # first: the live state of what compaction drops is kept
            return await asyncio.to_thread(
                self._file.compact,
                self.config.events_max_age_s,
                self.config.events_max_len,
                int(now_s * 1000),
            )

    async def close(self) -> None:
        async with self._log_lock:
            if self._since_checkpoint:
                await self._checkpoint()
