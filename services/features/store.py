"""The online store: one interface, two backends (Feast-style).

`OnlineStore` is what the features service reads and writes through:

* `materialize(version)` makes an artifact version's item feature rows and user profiles readable and
  switches reads to it (a version that is already complete is not written again);
* `pin(version)` / `unpin(name)` keep more versions readable beside it (experiment arms, <artifacts>/PINNED);
* `get_user` / `get_items` read the served version (or a pinned one by name) plus the live feedback;
* `append_events` appends a batch of events to the append-only log and updates the users' live recent
  and seen items, all or nothing; an event whose `event_id` was written within the idempotency window
  is skipped (a retried batch is written once);
* `read_events` returns the whole log, oldest first.

Backends: `services.features.embedded.EmbeddedStore` (in-process numpy arrays + a JSON-lines log; the
default) and `services.features.redis_store.RedisStore` (Redis: packed float32 blobs, a Stream log).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.event_ids import new_event_id
from services.common.sources.base import HISTORY_LIMIT

#: How many recent items a profile holds by default (live feedback first, then training history): as
#: many as the candidate sources score from, so the retrieval service sees them in the trainer's order.
RECENT_MAX = HISTORY_LIMIT

#: Files of an artifact version that the store reads.
ITEM_FILES = ("item_ids.json", "item_features.npy")
USER_FILES = ("user_ids.json", "user_features.npy", "user_history.json")

#: How long an event id is remembered: a retry of the same event within it is not written again.
IDEMPOTENCY_WINDOW_S = 86_400

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


class EventType(enum.StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    RATING = "rating"
    #: Written by the gateway: a response was served to the user under (experiment, arm).
    EXPOSURE = "exposure"

    @property
    def interacts(self) -> bool:
        """Clicks and ratings make an item recent and seen; impressions and exposures are only logged."""
        return self in (EventType.CLICK, EventType.RATING)


@dataclass(frozen=True)
class Event:
    """One feedback event as the store keeps it."""

    user_id: str
    item_id: str
    type: EventType
    timestamp_ms: int
    #: Set for ratings (finite); None otherwise.
    rating: float | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    #: Exposures only: the experiment and arm the response was served under ("" otherwise).
    experiment: str = ""
    arm: str = ""
    #: The idempotency key: the client's, or assigned when the event was accepted.
    event_id: str = field(default_factory=new_event_id)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type.value,
            "rating": self.rating,
            "timestamp_ms": self.timestamp_ms,
            "context": dict(self.context),
        }
        if self.experiment or self.arm:
            out["experiment"], out["arm"] = self.experiment, self.arm
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        rating = data.get("rating")
        return cls(
            user_id=str(data["user_id"]),
            item_id=str(data["item_id"]),
            type=EventType(data["type"]),
            timestamp_ms=int(data["timestamp_ms"]),
            rating=None if rating is None else float(rating),
            context={str(k): str(v) for k, v in (data.get("context") or {}).items()},
            experiment=str(data.get("experiment") or ""),
            arm=str(data.get("arm") or ""),
            # Logs written before events had ids: each line is its own event.
            event_id=str(data.get("event_id") or new_event_id()),
        )


def check_events(events: Sequence[Event]) -> None:
    """Refuse a batch with any malformed event (ValueError) before anything of it is written."""
    for i, event in enumerate(events):
        if not isinstance(event.type, EventType):
            raise ValueError(f"events[{i}]: type must be an EventType, got {event.type!r}")
        if not event.event_id:
            raise ValueError(f"events[{i}]: event_id must not be empty")
        if not event.user_id or (not event.item_id and event.type is not EventType.EXPOSURE):
            raise ValueError(f"events[{i}]: user_id and item_id must not be empty")
        if event.type is EventType.EXPOSURE and not (event.experiment and event.arm):
            raise ValueError(f"events[{i}]: an exposure needs its experiment and arm")
        if event.type is EventType.RATING and (event.rating is None or not math.isfinite(event.rating)):
            raise ValueError(f"events[{i}]: a rating needs a finite rating, got {event.rating!r}")
        # Must survive the log's JSON encoding.
        json.dumps(event.to_json(), allow_nan=False)


@dataclass(frozen=True)
class UserProfile:
    user_id: str
    #: True when the served version holds a trained profile for the user.
    known: bool
    #: Numeric user features, names in manifest.features.user (empty when unknown).
    values: FloatArray
    #: Live feedback first (newest first), then the training history; deduplicated, capped.
    recent_item_ids: tuple[str, ...]
    #: Training history plus every item of live clicks/ratings.
    seen_item_ids: frozenset[str]
    #: The artifact version the profile was read from ("" before any is materialized).
    version: str = ""


EMPTY = np.empty(0, dtype=np.float32)
EMPTY.flags.writeable = False


def merge_recent(live: Iterable[str], history: Iterable[str], limit: int) -> tuple[str, ...]:
    """Live items first, then history; first occurrence wins; at most `limit`."""
    out: dict[str, None] = {}
    for item in (*live, *history):
        if len(out) >= limit:
            break
        out.setdefault(item, None)
    return tuple(out)


class VersionNotServed(LookupError):
    """A read asked for an artifact version that is neither served nor pinned."""

    def __init__(self, version: str, served: Sequence[str]) -> None:
        super().__init__(f"artifact version {version!r} is not materialized (serving {', '.join(served)})")
        self.version = version
        self.served = list(served)


@runtime_checkable
class OnlineStore(Protocol):
    """What the features service needs from an online store."""

    @property
    def version(self) -> str | None:
        """The artifact version being served (None before the first `materialize`)."""

    @property
    def item_dim(self) -> int:
        """Columns of the item feature matrix of the served version (0 before any)."""

    async def materialize(self, version: ArtifactVersion) -> bool:
        """Make `version` readable and serve it; False when it was already complete (nothing written)."""

    async def pin(self, version: ArtifactVersion) -> None:
        """Keep `version` readable by name beside the served one (materialized if needed)."""

    def unpin(self, name: str) -> None: ...

    async def repair(self) -> list[str]:
        """Rewrite served versions the backend has lost (e.g. a restarted Redis); the names rewritten."""
        ...

    async def get_user(self, user_id: str, version: str = "") -> UserProfile:
        """The profile in `version` (empty: the served one; VersionNotServed when neither served nor pinned)."""

    async def get_items(self, item_ids: Sequence[str], version: str = "") -> tuple[FloatArray, BoolArray]:
        """Rows of the item feature matrix, float32 [len(item_ids), item_dim]; missing rows NaN/False."""

    async def append_events(self, events: Sequence[Event]) -> int:
        """Log every event and apply clicks/ratings to the live state, all or nothing, skipping events
        whose id was written within the idempotency window; returns how many were written."""

    async def read_events(self) -> list[Event]:
        """The whole event log (what retention kept), oldest first."""

    async def log_position(self) -> str:
        """Where the log ends now (opaque; for `mark_consumed`)."""
        ...

    async def mark_consumed(self, position: str) -> None:
        """A consumer (the trainer) has every event through `position`: retention may drop those, and
        never one after it (ValueError for a position this backend did not give)."""

    async def trim_events(self, now_s: float) -> int:
        """Retention: drop the oldest events past the configured age or count, never one after the
        consumer's mark; returns how many went. The live state is not changed."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ArtifactTables:
    """The arrays of one version that the store serves, read and checked."""

    version: str
    item_ids: list[str]
    item_features: FloatArray
    user_ids: list[str]
    user_features: FloatArray
    user_history: dict[str, list[str]]


def _ids(version: ArtifactVersion, name: str) -> list[str]:
    data = json.loads(version.file(name).read_text())
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ArtifactError(f"artifact {version.version}: {name} is not a JSON list of strings")
    if len(set(data)) != len(data):
        raise ArtifactError(f"artifact {version.version}: {name} has duplicate ids")
    return data


def _matrix(version: ArtifactVersion, name: str, rows: int) -> FloatArray:
    array = np.load(version.file(name), allow_pickle=False)
    if array.ndim != 2 or array.shape[0] != rows:
        raise ArtifactError(
            f"artifact {version.version}: {name} has shape {array.shape}, expected ({rows}, d)"
        )
    if array.dtype != np.float32:
        raise ArtifactError(f"artifact {version.version}: {name} is {array.dtype}, expected float32")
    return np.ascontiguousarray(array, dtype="<f4")


def read_tables(version: ArtifactVersion) -> ArtifactTables:
    """Load and check the files the store serves (blocking: call in a thread)."""
    item_ids = _ids(version, "item_ids.json")
    user_ids = _ids(version, "user_ids.json")
    history = json.loads(version.file("user_history.json").read_text())
    if not isinstance(history, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in history.values()
    ):
        raise ArtifactError(f"artifact {version.version}: user_history.json is not {{user: [item, ...]}}")
    return ArtifactTables(
        version=version.version,
        item_ids=item_ids,
        item_features=_matrix(version, "item_features.npy", len(item_ids)),
        user_ids=user_ids,
        user_features=_matrix(version, "user_features.npy", len(user_ids)),
        user_history={str(k): list(v) for k, v in history.items()},
    )
