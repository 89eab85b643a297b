"""Training rows from the platform's own event log (`recsys train --events SOURCE`).

SOURCE is a Redis URL (the features service's stream, under `--events-prefix`) or the embedded store's
JSON-lines log. What becomes of each event:

* click   -> an interaction, rating `click_rating` (clicks carry none);
* rating  -> an interaction with its rating;
* impression of an item the user did not click or rate -> shown-not-chosen (kept apart: `shown`);
* exposure (the gateway's record of a response) -> not an interaction, only counted;
* an event id seen before -> counted once;
* anything malformed -> skipped, counted, and the first few reasons kept; never a crash.

The watermark is the log position of the last event read: it goes into the manifest, and a later read
can start after it (`since`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.features.event_file import SEQ
from services.features.store import Event, EventType
from services.trainer.data import DataError, Dataset, Item, Log

#: Malformed events whose reasons are kept (the count covers them all).
REASONS_KEPT = 5
READ_PAGE = 10_000


@dataclass(frozen=True)
class EventRead:
    log: Log
    #: Impressions of an item the user neither clicked nor rated in this read.
    shown: Log
    counts: dict[str, int]
    reasons: list[str]
    #: The position of the last event read ("" when the log was empty).
    watermark: str
    #: The source without a password.
    source: str

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "watermark": self.watermark,
            "counts": self.counts,
            "malformed": self.reasons,
        }


def _redis_records(url: str, prefix: str, since: str | None) -> Iterator[tuple[str, Any]]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    key, start = f"{prefix}:events", f"({since}" if since else "-"
    try:
        while True:
            page: Any = client.xrange(key, min=start, max="+", count=READ_PAGE)
            for entry_id, fields in page:
                position = entry_id.decode()
                yield (
                    position,
                    {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()},
                )
            if len(page) < READ_PAGE:
                return
            start = f"({page[-1][0].decode()}"
    except redis.RedisError as e:
        raise DataError(f"--events: cannot read the event stream: {e}") from None
    finally:
        client.close()


def _file_records(path: Path, since: str | None) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise DataError(f"--events {path}: no such file")
    after = int(since) if since else -1
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            match = SEQ.match(line)
            seq = int(match.group(1)) if match else 0
            # A line without a seq (older format, or garbage) has no place after a watermark: the read
            # that set the watermark saw it.
            if seq <= after:
                continue
            try:
                yield str(seq or number), json.loads(line)
            except ValueError:
                yield str(seq or number), f"line {number}: not JSON"


def _event(record: Any) -> Event:
    """An event from a stored record (Redis stream fields are all strings); ValueError saying why not."""
    if not isinstance(record, dict):
        raise ValueError(str(record))
    data = dict(record)
    if isinstance(data.get("context"), str):
        data["context"] = json.loads(data["context"] or "{}")
    if data.get("rating") == "":
        data["rating"] = None
    try:
        event = Event.from_json(data)
    except KeyError as e:
        raise ValueError(f"missing {e.args[0]}") from None
    if not event.user_id or (not event.item_id and event.type is not EventType.EXPOSURE):
        raise ValueError("empty user_id or item_id")
    if event.type is EventType.RATING and (event.rating is None or not math.isfinite(event.rating)):
        raise ValueError(f"a rating without a finite rating ({event.rating!r})")
    return event


def _log(rows: list[tuple[str, str, float, float]]) -> Log:
    rows.sort(key=lambda r: r[3])
    return Log(
        np.array([r[0] for r in rows], dtype=str),
        np.array([r[1] for r in rows], dtype=str),
        np.array([r[2] for r in rows], dtype=np.float32),
        np.array([r[3] for r in rows], dtype=np.float64),
    )


def read(
    source: str, prefix: str = "recsys", click_rating: float = 1.0, since: str | None = None
) -> EventRead:
    """Read SOURCE (after `since`, a watermark of an earlier read) into training rows."""
    from services.features.redis_store import redact

    if source.startswith(("redis://", "rediss://", "unix://")):
        records, shown_source = _redis_records(source, prefix, since), redact(source)
    else:
        records, shown_source = _file_records(Path(source), since), Path(source).name
    counts: Counter[str] = Counter()
    reasons: list[str] = []
    seen_ids: set[str] = set()
    interactions: list[tuple[str, str, float, float]] = []
    impressions: list[tuple[str, str, float, float]] = []
    watermark = ""
    for position, record in records:
        watermark = position
        counts["read"] += 1
        try:
            event = _event(record)
        except (ValueError, TypeError) as e:
            counts["malformed"] += 1
            if len(reasons) < REASONS_KEPT:
                reasons.append(f"{position}: {e}")
            continue
        if event.event_id in seen_ids:
            counts["duplicates"] += 1
            continue
        seen_ids.add(event.event_id)
        seconds = event.timestamp_ms / 1000
        if event.type is EventType.EXPOSURE:
            counts["exposures"] += 1
        elif event.type is EventType.IMPRESSION:
            counts["impressions"] += 1
            impressions.append((event.user_id, event.item_id, 0.0, seconds))
        else:
            counts["clicks" if event.type is EventType.CLICK else "ratings"] += 1
            rating = click_rating if event.rating is None or event.type is EventType.CLICK else event.rating
            interactions.append((event.user_id, event.item_id, float(rating), seconds))
    chosen = {(u, i) for u, i, _, _ in interactions}
    shown = [r for r in impressions if (r[0], r[1]) not in chosen]
    counts["interactions"] = len(interactions)
    counts["shown_not_chosen"] = len(shown)
    return EventRead(_log(interactions), _log(shown), dict(counts), reasons, watermark, shown_source)


def concat(a: Log, b: Log) -> Log:
    """Both logs in one, sorted by time (ties: `a` first)."""
    joined = Log(
        np.concatenate([a.users, b.users]).astype(str),
        np.concatenate([a.items, b.items]).astype(str),
        np.concatenate([a.ratings, b.ratings]).astype(np.float32),
        np.concatenate([a.timestamps, b.timestamps]),
    )
    return joined.take(np.argsort(joined.timestamps, kind="stable"))


def with_events(base: Dataset | None, events: EventRead) -> Dataset:
    """The base dataset (or none) plus the events' interactions; items only the events know join the
    catalogue without metadata (the content source learns them from a catalogue upsert, not from here)."""
    if base is None and not len(events.log):
        raise DataError(f"--events {events.source}: no clicks or ratings to train on ({events.counts})")
    log = events.log if base is None else concat(base.log, events.log)
    catalog: dict[str, Item] = dict(base.catalog) if base is not None else {}
    for item in sorted(set(events.log.items.tolist()) - catalog.keys()):
        catalog[item] = Item()
    marker = f"events:{events.source}@{events.watermark}"
    fingerprint = hashlib.sha256(f"{base.fingerprint if base else ''}\n{marker}".encode()).hexdigest()
    if base is None:
        return Dataset(f"events ({events.source})", fingerprint, {}, log, catalog)
    return dataclasses.replace(
        base, source=f"{base.source} + events", fingerprint=fingerprint, log=log, catalog=catalog
    )
