"""Training rows from the platform's own event log (`recsys train --events SOURCE`).

SOURCE is a Redis URL (the features service's stream, under `--events-prefix`) or the embedded store's
JSON-lines log. What becomes of each event:

* click   -> an interaction, rating `click_rating` (clicks carry none);
* rating  -> an interaction with its rating;
* impression of an item the user did not click or rate -> shown-not-chosen (`Interactions.shown`: the
  ranker's item feature `item_log_skipped`, services/trainer/stats.py);
* exposure (the gateway's record of a response) -> not an interaction, only counted;
* an event id seen before (in this read, or in an earlier run's interactions: `seen`) -> counted once;
* anything malformed -> skipped, counted, and the first few reasons kept; never a crash.

The live catalogue beside the log (the store's upserted items: Redis keys under the prefix, or the
embedded store's `catalogue.jsonl` next to its event log) is read whole: an upserted item's title,
categories (as genres), publish year and tags replace what the base file says of it, so a retrain
learns the content of items that only the catalogue API ever described.

The watermark is the log position of the last event read: it goes into the manifest, and a later read
can start after it (`since`). Each version also keeps the interactions it was fitted on, with the event
id of each row that came from the log (`interactions.npz`): the next run is those plus the events after
the watermark, and an event re-sent after the watermark under an id already trained on counts once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.catalogue import CatalogueItem
from services.common.content_space import normalise_tag
from services.features.event_file import SEQ, EventFile
from services.features.store import Event, EventType
from services.trainer.data import DataError, Dataset, Item, Log, Tags

#: Malformed events whose reasons are kept (the count covers them all).
REASONS_KEPT = 5
READ_PAGE = 10_000


#: A version's training interactions, with the event id of every row read from the log ("" otherwise).
INTERACTIONS_FILE = "interactions.npz"
#: The embedded store's catalogue, beside its event log (the features service's default).
CATALOGUE_FILE = "catalogue.jsonl"


@dataclass(frozen=True)
class Interactions:
    log: Log
    #: Parallel to `log`: the event id a row came from, "" for a row of a base file.
    event_ids: npt.NDArray[np.str_]
    #: Impressions of an item the user neither clicked nor rated (no pair of `log`), in time order.
    shown: Log = dataclasses.field(default_factory=Log.empty)

    @classmethod
    def of_base(cls, log: Log) -> Interactions:
        return cls(log, np.full(len(log), "", dtype=str))

    def save(self, path: Path) -> None:
        log, shown = self.log, self.shown
        with path.open("wb") as f:
            np.savez_compressed(
                f,
                users=log.users.astype(str),
                items=log.items.astype(str),
                ratings=log.ratings,
                timestamps=log.timestamps,
                event_ids=self.event_ids.astype(str),
                shown_users=shown.users.astype(str),
                shown_items=shown.items.astype(str),
                shown_timestamps=shown.timestamps,
            )

    @classmethod
    def load(cls, path: Path) -> Interactions:
        keys = ("users", "items", "ratings", "timestamps", "event_ids")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in keys}
                # a version written before shown-not-chosen was kept has none
                shown = (
                    Log(
                        z["shown_users"],
                        z["shown_items"],
                        np.zeros(len(z["shown_users"]), dtype=np.float32),
                        z["shown_timestamps"],
                    )
                    if "shown_users" in z
                    else Log.empty()
                )
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path.name}: not a training-interactions file ({e})") from None
        log = Log(arrays["users"], arrays["items"], arrays["ratings"], arrays["timestamps"])
        return cls(log, arrays["event_ids"], shown)

    def seen_ids(self) -> set[str]:
        return set(self.event_ids.tolist()) - {""}


def joined(a: Interactions, b: Interactions) -> Interactions:
    """Both in one, sorted by time (ties: `a` first); a pair shown in one and chosen in either is no
    longer shown-not-chosen."""
    log = _concatenated(a.log, b.log)
    order = np.argsort(log.timestamps, kind="stable")
    shown = _concatenated(a.shown, b.shown)
    chosen = set(zip(log.users.tolist(), log.items.tolist(), strict=True))
    keep = np.fromiter(
        (p not in chosen for p in zip(shown.users.tolist(), shown.items.tolist(), strict=True)),
        dtype=bool,
        count=len(shown),
    )
    shown = shown.take(keep)
    return Interactions(
        log.take(order),
        np.concatenate([a.event_ids, b.event_ids]).astype(str)[order],
        shown.take(np.argsort(shown.timestamps, kind="stable")),
    )


def _concatenated(a: Log, b: Log) -> Log:
    return Log(
        np.concatenate([a.users, b.users]).astype(str),
        np.concatenate([a.items, b.items]).astype(str),
        np.concatenate([a.ratings, b.ratings]).astype(np.float32),
        np.concatenate([a.timestamps, b.timestamps]),
    )


@dataclass(frozen=True)
class EventRead:
    #: The clicks and ratings, with their event ids, and the impressions of an item the user neither
    #: clicked nor rated in this read (`shown`).
    interactions: Interactions
    counts: dict[str, int]
    reasons: list[str]
    #: The position of the last event read (`since` when nothing followed it, "" for an empty log).
    watermark: str
    #: The source without a password.
    source: str
    #: Where this read started: after this watermark ("": from the beginning of the log).
    since: str = ""
    #: The live catalogue's upserted items (hidden ones too: hiding is a serving rule).
    catalogue: tuple[CatalogueItem, ...] = ()

    @property
    def log(self) -> Log:
        return self.interactions.log

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "since": self.since,
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


Row = tuple[str, str, float, float, str]


def _interactions(rows: list[Row]) -> Interactions:
    rows.sort(key=lambda r: r[3])
    log = Log(
        np.array([r[0] for r in rows], dtype=str),
        np.array([r[1] for r in rows], dtype=str),
        np.array([r[2] for r in rows], dtype=np.float32),
        np.array([r[3] for r in rows], dtype=np.float64),
    )
    return Interactions(log, np.array([r[4] for r in rows], dtype=str))


def _catalogue(source: str, prefix: str, catalogue_file: Path | None) -> tuple[CatalogueItem, ...]:
    """The upserted items of the catalogue kept with SOURCE's store, oldest change first."""
    from services.features import catalogue

    if not is_redis(source):
        entries, _, _ = catalogue.replayed(catalogue_file or Path(source).with_name(CATALOGUE_FILE))
    else:
        import asyncio

        import redis
        import redis.asyncio as aioredis

        async def changes() -> list[Any]:
            client = aioredis.Redis.from_url(source, socket_connect_timeout=5, socket_timeout=30)
            try:
                found, _ = await catalogue.RedisCatalogue(client, prefix).changes(0)
                return found
            finally:
                await client.aclose()

        try:
            entries = asyncio.run(changes())
        except redis.RedisError as e:
            raise DataError(f"--events: cannot read the live catalogue: {e}") from None
    return tuple(e.item for e in sorted(entries, key=lambda e: e.version) if e.upserted)


def is_redis(source: str) -> bool:
    return source.startswith(("redis://", "rediss://", "unix://"))


def shown_source(source: str) -> str:
    """SOURCE as the manifest records it: a Redis URL without its password, a file by its name."""
    from services.features.redis_store import redact

    return redact(source) if is_redis(source) else Path(source).name


def read(
    source: str,
    prefix: str = "recsys",
    click_rating: float = 1.0,
    since: str | None = None,
    seen: set[str] | None = None,
    catalogue_file: Path | None = None,
) -> EventRead:
    """Read SOURCE (after `since`, a watermark of an earlier read) into training rows; an event whose id
    is in `seen` (the ids an earlier run trained on) is a duplicate. `catalogue_file`: the embedded
    store's catalogue when it is not beside its log (the features service's --catalogue-log)."""
    if is_redis(source):
        records = _redis_records(source, prefix, since)
    else:
        records = _file_records(Path(source), since)
    counts: Counter[str] = Counter()
    reasons: list[str] = []
    seen_ids: set[str] = set(seen or ())
    interactions: list[Row] = []
    impressions: list[Row] = []
    watermark = since or ""  # nothing new: the log is read through the same position as before
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
            impressions.append((event.user_id, event.item_id, 0.0, seconds, event.event_id))
        else:
            counts["clicks" if event.type is EventType.CLICK else "ratings"] += 1
            rating = click_rating if event.rating is None or event.type is EventType.CLICK else event.rating
            interactions.append((event.user_id, event.item_id, float(rating), seconds, event.event_id))
    chosen = {(r[0], r[1]) for r in interactions}
    shown = [r for r in impressions if (r[0], r[1]) not in chosen]
    counts["interactions"] = len(interactions)
    counts["shown_not_chosen"] = len(shown)
    upserted = _catalogue(source, prefix, catalogue_file)
    counts["catalogue_items"] = len(upserted)
    return EventRead(
        dataclasses.replace(_interactions(interactions), shown=_interactions(shown).log),
        dict(counts),
        reasons,
        watermark,
        shown_source(source),
        since or "",
        upserted,
    )


def with_events(
    base: Dataset | None, earlier: Interactions | None, events: EventRead
) -> tuple[Dataset, Interactions]:
    """The training set: the base dataset (or none) for the catalogue, and as interactions the `earlier`
    run's (an incremental read) or else the base's, plus the events'; with those interactions and their
    event ids. The live catalogue's items replace or join the base's; an item only the log knows joins
    without metadata."""
    before = earlier if earlier is not None else Interactions.of_base(base.log) if base is not None else None
    if before is None or not len(before.log):
        if not len(events.log):
            raise DataError(f"--events {events.source}: no clicks or ratings to train on ({events.counts})")
        before = Interactions.of_base(events.log.take(np.zeros(0, dtype=np.int64)))
    interactions = joined(before, events.interactions)
    log = interactions.log
    catalog: dict[str, Item] = dict(base.catalog) if base is not None else {}
    catalog.update((i.item_id, _item(i)) for i in events.catalogue)
    for item in sorted(set(log.items.tolist()) - catalog.keys()):
        catalog[item] = Item()
    tags = _with_catalogue_tags(base.tags if base is not None else Tags.empty(), events.catalogue)
    marker = f"events:{events.source}@{events.watermark}"
    fingerprint = hashlib.sha256(f"{base.fingerprint if base else ''}\n{marker}".encode()).hexdigest()
    shown = interactions.shown
    if base is None:
        dataset = Dataset(f"events ({events.source})", fingerprint, {}, log, catalog, tags=tags, shown=shown)
        return dataset, interactions
    source = base.source if base.source.endswith(" + events") else f"{base.source} + events"
    dataset = dataclasses.replace(
        base, source=source, fingerprint=fingerprint, log=log, catalog=catalog, tags=tags, shown=shown
    )
    return dataset, interactions


def _item(upserted: CatalogueItem) -> Item:
    year = (
        float(time.gmtime(upserted.published_at_ms / 1000).tm_year)
        if upserted.published_at_ms > 0
        else float("nan")
    )
    return Item(title=upserted.title, genres=upserted.categories, release_year=year)


def _with_catalogue_tags(tags: Tags, upserted: tuple[CatalogueItem, ...]) -> Tags:
    """`tags` (users' tags) plus each upserted item's tags, as given by no user at no time (item metadata,
    so every fit may know them)."""
    pairs = [(i.item_id, normalise_tag(t)) for i in upserted for t in i.tags if normalise_tag(t)]
    if not pairs:
        return tags
    return Tags(
        np.concatenate([tags.users, np.full(len(pairs), "", dtype=str)]).astype(str),
        np.concatenate([tags.items, np.array([p[0] for p in pairs], dtype=str)]).astype(str),
        np.concatenate([tags.texts, np.array([p[1] for p in pairs], dtype=str)]).astype(str),
        np.concatenate([tags.timestamps, np.zeros(len(pairs))]),
    )


def mark_consumed(source: str, prefix: str, watermark: str) -> None:
    """Tell SOURCE's store that a published version holds every event through `watermark`, so its
    retention may drop them: the store's own `mark_consumed` (Redis), or its event file's (embedded)."""
    if not watermark:
        return
    if is_redis(source):
        import asyncio

        from services.features.redis_store import RedisConfig, RedisStore

        async def mark() -> None:
            store = RedisStore(RedisConfig(url=source, prefix=prefix))
            try:
                await store.mark_consumed(watermark)
            finally:
                await store.close()

        asyncio.run(mark())
    else:
        EventFile(Path(source)).mark_consumed(int(watermark))
