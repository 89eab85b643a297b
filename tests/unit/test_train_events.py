"""Training from the platform's own events: the reader over both stores' logs (clicks and ratings as
interactions, impressions kept apart, exposures left out, an id once, malformed events counted), and
`recsys train --events` end to end."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from services.common.artifacts import open_current
from services.common.catalogue import CatalogueItem
from services.common.ranker_features import ITEM_FEATURES
from services.features.catalogue import CatalogueStore, FileCatalogue, RedisCatalogue
from services.features.embedded import EmbeddedConfig, EmbeddedStore
from services.features.redis_store import RedisConfig, RedisStore
from services.features.store import Event, EventType, OnlineStore
from services.trainer import events
from services.trainer.cli import add_arguments, config_from_args, main
from services.trainer.data import Log
from tests.support import BUNDLED_DATA, TEST_SETTINGS

#: How the store writes its lines (the seq first, no spaces).
COMPACT = (",", ":")


def ev(user: str, item: str, kind: EventType, ts: int, **kw: object) -> Event:
    rating = 3.5 if kind is EventType.RATING else None
    return Event(user_id=user, item_id=item, type=kind, timestamp_ms=ts, rating=rating, **kw)  # type: ignore[arg-type]


LOGGED = [
    ev("u1", "a", EventType.IMPRESSION, 1000),
    ev("u1", "a", EventType.CLICK, 2000),  # impression then click: chosen
    ev("u1", "b", EventType.IMPRESSION, 3000),  # shown, not chosen
    ev("u2", "c", EventType.RATING, 4000),
    ev("u2", "", EventType.EXPOSURE, 5000, experiment="x", arm="control"),
]


def write(store: OnlineStore, batch: list[Event]) -> None:
    async def main() -> None:
        try:
            await store.append_events(batch)
        finally:
            await store.close()

    asyncio.run(main())


def check(read: events.EventRead, malformed: int) -> None:
    assert read.counts["interactions"] == 2 and read.counts["clicks"] == 1 and read.counts["ratings"] == 1
    assert read.counts["exposures"] == 1 and read.counts["shown_not_chosen"] == 1
    assert read.counts["malformed"] == malformed and len(read.reasons) == malformed
    assert list(zip(read.log.users, read.log.items, read.log.ratings, strict=True)) == [
        ("u1", "a", 4.0),
        ("u2", "c", 3.5),
    ]
    assert list(read.log.timestamps) == [2.0, 4.0]
    shown = read.interactions.shown
    assert list(zip(shown.users, shown.items, strict=True)) == [("u1", "b")]


def test_shown_not_chosen_is_kept_across_reads_until_chosen() -> None:
    def log(rows: list[tuple[str, str, float]]) -> Log:
        users, items, stamps = (list(c) for c in zip(*rows, strict=True))
        return Log(np.array(users), np.array(items), np.ones(len(rows), np.float32), np.array(stamps))

    earlier = events.Interactions(
        log([("u1", "a", 1.0)]), np.array(["e1"]), log([("u1", "b", 2.0), ("u2", "b", 3.0)])
    )
    later = events.Interactions(log([("u2", "b", 5.0)]), np.array(["e9"]), log([("u1", "c", 4.0)]))
    both = events.joined(earlier, later)
    # u2 chose b after it was shown to them: no longer shown-not-chosen; u1's pairs stay, in time order
    assert list(zip(both.shown.users, both.shown.items, strict=True)) == [("u1", "b"), ("u1", "c")]
    assert list(both.log.items) == ["a", "b"]


def test_the_embedded_log(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(EmbeddedStore(EmbeddedConfig(event_log=path)), LOGGED)
    with path.open("a") as f:
        f.write("{not json\n")
        f.write(
            json.dumps({"seq": 99, "user_id": "u3", "type": "click", "timestamp_ms": 1}, separators=COMPACT)
            + "\n"
        )
        # The same event id again (a log written by an older version without the idempotency check).
        again = json.loads(path.read_text().splitlines()[1])
        f.write(json.dumps({**again, "seq": 100}, separators=COMPACT) + "\n")
    read = events.read(str(path), click_rating=4.0)
    check(read, malformed=2)
    assert read.counts["duplicates"] == 1
    assert "not JSON" in read.reasons[0] and "missing item_id" in read.reasons[1]
    assert read.watermark == "100"
    later = events.read(str(path), since="99")  # incrementally: only what follows the watermark
    assert later.counts["read"] == 1 and later.counts["interactions"] == 1


def test_the_redis_stream(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    write(RedisStore(RedisConfig(url=redis_url, prefix=prefix)), LOGGED)
    redis.Redis.from_url(redis_url).xadd(f"{prefix}:events", {"user_id": "u9", "type": "nonsense"})
    read = events.read(redis_url, prefix=prefix, click_rating=4.0)
    check(read, malformed=1)
    assert "missing item_id" in read.reasons[0]
    client: Any = redis.Redis.from_url(redis_url)
    assert read.watermark == client.xrevrange(f"{prefix}:events", count=1)[0][0].decode()
    assert events.read(redis_url, prefix=prefix, since=read.watermark).counts.get("read", 0) == 0


NEW_FILM = CatalogueItem(
    "brand-new-item", "A New Film (2031)", ("Animation", "Sci-Fi"), ("Robots", "space"), 1_924_992_000_000
)


def upsert(catalogue: CatalogueStore, items: list[CatalogueItem]) -> None:
    async def main() -> None:
        try:
            await catalogue.upsert(items)
            await catalogue.set_hidden([items[0].item_id], True)  # hiding is a serving rule: still read
        finally:
            await catalogue.close()

    asyncio.run(main())


def check_catalogue(read: events.EventRead) -> None:
    assert read.counts["catalogue_items"] == 2
    assert sorted(i.item_id for i in read.catalogue) == ["1", "brand-new-item"]
    data, _ = events.with_events(None, None, read)
    assert data.catalog["brand-new-item"].genres == ("Animation", "Sci-Fi")
    assert data.catalog["brand-new-item"].year == 2031.0
    assert data.catalog["1"].title == "Toy Story, renamed"
    tags = data.tags
    tagged = set(zip(tags.users.tolist(), tags.items.tolist(), tags.texts.tolist(), strict=True))
    assert tagged == {("", "brand-new-item", "robots"), ("", "brand-new-item", "space")}


def test_the_live_catalogue_beside_the_embedded_log(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(EmbeddedStore(EmbeddedConfig(event_log=path)), LOGGED)
    upsert(
        FileCatalogue(tmp_path / events.CATALOGUE_FILE), [CatalogueItem("1", "Toy Story, renamed"), NEW_FILM]
    )
    check_catalogue(events.read(str(path)))


def test_a_live_catalogue_elsewhere_is_named_with_events_catalogue(tmp_path: Path) -> None:
    """The features service's --catalogue-log put it away from the log: the trainer reads that file."""
    path = tmp_path / "events.jsonl"
    write(EmbeddedStore(EmbeddedConfig(event_log=path)), LOGGED)
    elsewhere = tmp_path / "state" / "items.jsonl"
    elsewhere.parent.mkdir()
    upsert(FileCatalogue(elsewhere), [CatalogueItem("1", "Toy Story, renamed"), NEW_FILM])
    assert events.read(str(path)).catalogue == ()
    check_catalogue(events.read(str(path), catalogue_file=elsewhere))
    parsed = parse(
        ["--events", str(path), "--events-catalogue", str(elsewhere), "--out", str(tmp_path / "a")]
    )
    assert config_from_args(parsed).events_catalogue == elsewhere


def test_the_live_catalogue_in_redis(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    write(RedisStore(RedisConfig(url=redis_url, prefix=prefix)), LOGGED)
    client = redis.asyncio.Redis.from_url(redis_url)
    upsert(RedisCatalogue(client, prefix), [CatalogueItem("1", "Toy Story, renamed"), NEW_FILM])
    check_catalogue(events.read(redis_url, prefix=prefix))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_train_on_the_bundled_data_and_the_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    # A newcomer clicking items of the catalogue, and one item nobody rated in the base data.
    batch = [
        ev("newcomer", str(item), EventType.CLICK, 2_000_000_000_000 + i)
        for i, item in enumerate((1, 2, 3, 50))
    ]
    batch += [
        ev("1", "brand-new-item", EventType.CLICK, 2_000_000_000_100),
        ev("2", "brand-new-item", EventType.CLICK, 2_000_000_000_200),
    ]
    # item 100 shown to three users, none of whom chose it (before the last click: a fit knows what is
    # no later than its last interaction, as with tags): the ranker's item_log_skipped
    batch += [ev(u, "100", EventType.IMPRESSION, 2_000_000_000_050) for u in ("3", "4", "5")]
    write(EmbeddedStore(EmbeddedConfig(event_log=path)), batch)
    upsert(FileCatalogue(path.with_name(events.CATALOGUE_FILE)), [NEW_FILM])
    out = tmp_path / "artifacts"
    settings = [a for s in TEST_SETTINGS for a in ("--set", s)]
    argv = ["--data", str(BUNDLED_DATA), "--events", str(path), "--out", str(out), "--no-progress", *settings]
    assert main(parse(argv)) == 0
    printed = capsys.readouterr().out
    assert "events from events.jsonl through 9: 9 read, 6 new interactions, 3 shown not chosen" in printed
    version = open_current(out)
    described = version.manifest["data"]["events"]
    assert described["watermark"] == "9" and described["counts"]["interactions"] == 6
    assert version.manifest["data"]["source"] == "ml-latest-small + events"
    assert "newcomer" in json.loads(version.file("user_ids.json").read_text())
    assert "brand-new-item" in json.loads(version.file("item_ids.json").read_text())
    # The item only the catalogue API described is trained with its categories.
    with version.file("items.csv").open(newline="") as f:
        genres = {row["item_id"]: row["genres"] for row in csv.DictReader(f)}
    assert genres["brand-new-item"] == "Animation|Sci-Fi"
    # The shown-not-chosen pairs are kept with the version and reach the ranker's item rows.
    kept = events.Interactions.load(version.file(events.INTERACTIONS_FILE)).shown
    assert sorted(zip(kept.users.tolist(), kept.items.tolist(), strict=True)) == [
        ("3", "100"),
        ("4", "100"),
        ("5", "100"),
    ]
    skipped = np.load(version.file("item_features.npy"))[:, ITEM_FEATURES.index("item_log_skipped")]
    row = {item: r for r, item in enumerate(json.loads(version.file("item_ids.json").read_text()))}
    assert skipped[row["100"]] > 0 and np.count_nonzero(skipped) == 1


def test_an_unreachable_event_source_is_one_line_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifacts"
    assert main(parse(["--events", "redis://127.0.0.1:1/0", "--out", str(out), "--no-progress"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recsys train: --events: cannot read the event stream")
    assert not (out / "CURRENT").exists()
    assert main(parse(["--events", str(tmp_path / "missing.jsonl"), "--out", str(out), "--no-progress"])) == 2
    assert "no such file" in capsys.readouterr().err


def test_mark_consumed_tells_the_redis_store(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    write(RedisStore(RedisConfig(url=redis_url, prefix=prefix)), LOGGED)
    read = events.read(redis_url, prefix=prefix)
    events.mark_consumed(redis_url, prefix, read.watermark)
    client: Any = redis.Redis.from_url(redis_url)
    assert client.get(f"{prefix}:events:consumed").decode() == read.watermark
