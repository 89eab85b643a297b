"""One contract for every online store backend (in-process and Redis), against real backends only.

Each test runs its own event loop (`asyncio.run`); the Redis backend uses the session's real redis-server
with a fresh key prefix per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from services.features.embedded import EmbeddedConfig, EmbeddedStore
from services.features.redis_store import RedisConfig, RedisStore
from services.features.store import Event, EventType, OnlineStore, merge_recent
from tests.unit.features_fixtures import Tables, build_version

RECENT = 10


@dataclass(frozen=True)
class Backend:
    name: str
    #: A new store instance over the same durable state (same log file / same Redis prefix).
    make: Callable[[], OnlineStore]
    redis_url: str = ""
    prefix: str = ""


@dataclass(frozen=True)
class Versions:
    v1: Tables
    v2: Tables
    v3: Tables


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    root = tmp_path_factory.mktemp("feature-artifacts")
    return Versions(
        v1=build_version(root, "v1", seed=1),
        v2=build_version(root, "v2", n_items=50, n_users=10, seed=2),
        v3=build_version(root, "v3", n_items=20, n_users=5, seed=3),
    )


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "embedded":
        log = tmp_path / "var" / "events.jsonl"
        return Backend("embedded", lambda: EmbeddedStore(EmbeddedConfig(event_log=log, recent_max=RECENT)))
    return make_redis_backend(request.getfixturevalue("redis_url"))


def make_redis_backend(url: str) -> Backend:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    # batch_size 7: materializing takes many pipelined MSET round trips even for these small versions.
    config = RedisConfig(url=url, prefix=prefix, recent_max=RECENT, batch_size=7)
    return Backend("redis", lambda: RedisStore(config), url, prefix)


@pytest.fixture
def redis_backend(redis_url: str) -> Backend:
    return make_redis_backend(redis_url)


def run(backend: Backend, scenario: Callable[[OnlineStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = backend.make()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def ev(user: str, item: str, kind: EventType = EventType.CLICK, ts: int = 1, **kw: Any) -> Event:
    rating = kw.pop("rating", 4.5 if kind is EventType.RATING else None)
    return Event(user_id=user, item_id=item, type=kind, timestamp_ms=ts, rating=rating, **kw)


def test_backends_satisfy_the_protocol(backend: Backend) -> None:
    async def scenario(store: OnlineStore) -> None:
        assert isinstance(store, OnlineStore)
        assert store.version is None and store.item_dim == 0

    run(backend, scenario)


def test_materialize_then_read_users_and_items_bit_for_bit(backend: Backend, versions: Versions) -> None:
    t = versions.v1

    async def scenario(store: OnlineStore) -> None:
        assert await store.materialize(t.version) is True
        assert store.version == "v1"
        assert store.item_dim == t.item_features.shape[1]

        values, found = await store.get_items(t.item_ids)
        assert values.dtype == np.float32 and values.shape == t.item_features.shape
        assert found.dtype == np.bool_ and found.all()
        assert values.tobytes() == t.item_features.tobytes()  # -0.0, inf, subnormal included

        order = [7, 0, 59, 3, 3, 58]
        values, found = await store.get_items([t.item_ids[i] for i in order])
        assert found.all()
        assert values.tobytes() == t.item_features[order].tobytes()

        for row, user in enumerate(t.user_ids):
            profile = await store.get_user(user)
            assert profile.known and profile.user_id == user and profile.version == "v1"
            assert profile.values.dtype == np.float32
            assert profile.values.tobytes() == t.user_features[row].tobytes()
            assert profile.recent_item_ids == tuple(t.user_history[user][:RECENT])
            assert profile.seen_item_ids == frozenset(t.user_history[user])

    run(backend, scenario)


def test_unknown_items_are_nan_and_not_found(backend: Backend, versions: Versions) -> None:
    t = versions.v1

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(t.version)
        ids = ["nope", t.item_ids[3], "", t.item_ids[0], "i9999"]
        values, found = await store.get_items(ids)
        assert found.tolist() == [False, True, False, True, False]
        assert values.shape == (5, t.item_features.shape[1])
        assert np.isnan(values[~found]).all()
        assert values[found].tobytes() == t.item_features[[3, 0]].tobytes()

        values, found = await store.get_items([])
        assert values.shape == (0, t.item_features.shape[1]) and found.shape == (0,)

    run(backend, scenario)


def test_unknown_user_is_not_known_and_has_empty_vectors(backend: Backend, versions: Versions) -> None:
    async def scenario(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        profile = await store.get_user("stranger")
        assert not profile.known
        assert profile.values.size == 0
        assert profile.recent_item_ids == () and profile.seen_item_ids == frozenset()

    run(backend, scenario)


def test_reads_before_any_version(backend: Backend) -> None:
    async def scenario(store: OnlineStore) -> None:
        values, found = await store.get_items(["a", "b"])
        assert values.shape[0] == 2 and not found.any()
        profile = await store.get_user("u0")
        assert not profile.known and profile.version == ""

    run(backend, scenario)


def test_clicks_and_ratings_are_recent_and_seen_at_once(backend: Backend, versions: Versions) -> None:
    t = versions.v1
    user = t.user_ids[0]
    history = t.user_history[user]
    fresh = [i for i in t.item_ids if i not in history][:3]

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(t.version)
        await store.append_events([ev(user, fresh[0])])
        profile = await store.get_user(user)
        assert profile.recent_item_ids[0] == fresh[0]
        assert fresh[0] in profile.seen_item_ids

        await store.append_events([ev(user, fresh[1], EventType.RATING), ev(user, history[-1])])
        profile = await store.get_user(user)
        expected = merge_recent([history[-1], fresh[1], fresh[0]], history, RECENT)
        assert profile.recent_item_ids == expected  # newest first, no duplicates, live before history
        assert profile.seen_item_ids == frozenset(history) | {fresh[0], fresh[1]}

        # Clicking an item again moves it to the front instead of repeating it.
        await store.append_events([ev(user, fresh[0])])
        profile = await store.get_user(user)
        assert profile.recent_item_ids[:3] == (fresh[0], history[-1], fresh[1])
        assert len(set(profile.recent_item_ids)) == len(profile.recent_item_ids)

    run(backend, scenario)


def test_impressions_are_logged_but_not_recent_or_seen(backend: Backend, versions: Versions) -> None:
    t = versions.v1
    user = t.user_ids[1]
    fresh = next(i for i in t.item_ids if i not in t.user_history[user])

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(t.version)
        before = await store.get_user(user)
        await store.append_events([ev(user, fresh, EventType.IMPRESSION)])
        after = await store.get_user(user)
        assert fresh not in after.recent_item_ids and fresh not in after.seen_item_ids
        assert after.recent_item_ids == before.recent_item_ids
        assert [e.type for e in await store.read_events()] == [EventType.IMPRESSION]

    run(backend, scenario)


def test_unknown_user_gets_live_recent_and_seen(backend: Backend, versions: Versions) -> None:
    async def scenario(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        await store.append_events([ev("newcomer", "i1"), ev("newcomer", "i2", EventType.RATING)])
        profile = await store.get_user("newcomer")
        assert not profile.known and profile.values.size == 0
        assert profile.recent_item_ids == ("i2", "i1")
        assert profile.seen_item_ids == frozenset({"i1", "i2"})

    run(backend, scenario)


def test_recent_is_capped_but_seen_keeps_everything(backend: Backend, versions: Versions) -> None:
    async def scenario(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        items = [f"x{i}" for i in range(RECENT + 5)]
        await store.append_events([ev("capped", item, ts=i + 1) for i, item in enumerate(items)])
        profile = await store.get_user("capped")
        assert profile.recent_item_ids == tuple(reversed(items))[:RECENT]
        assert profile.seen_item_ids == frozenset(items)

    run(backend, scenario)


def test_the_log_keeps_every_event_in_order(backend: Backend) -> None:
    batch = [
        ev("u0", "i1", EventType.IMPRESSION, ts=10, context={"page": "home", "pos": "1"}),
        ev("u0", "i1", EventType.CLICK, ts=11),
        ev("u0", "i1", EventType.RATING, ts=12, rating=-0.5),
        ev("user:with:colons", "filmé 🎬", EventType.RATING, ts=13, rating=5.0, context={"k": "é"}),
    ]

    async def scenario(store: OnlineStore) -> None:
        assert await store.read_events() == []
        assert await store.append_events(batch[:2]) == 2
        assert await store.append_events(batch[2:]) == 2
        assert await store.read_events() == batch

    run(backend, scenario)


def test_a_retried_event_is_written_once(backend: Backend, versions: Versions) -> None:
    first = [ev("r0", "a", ts=1, event_id="e-1"), ev("r0", "b", ts=2, event_id="e-2")]
    retry = [ev("r0", "b", ts=2, event_id="e-2"), ev("r0", "c", ts=3, event_id="e-3")]

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        assert await store.append_events(first) == 2
        assert await store.append_events(first) == 0
        assert await store.append_events(retry) == 1  # e-2 again, e-3 new
        assert [e.event_id for e in await store.read_events()] == ["e-1", "e-2", "e-3"]
        profile = await store.get_user("r0")
        assert profile.recent_item_ids[:3] == ("c", "b", "a")
        # The same id twice in one batch: written once.
        assert await store.append_events([ev("r0", "d", event_id="e-4"), ev("r0", "d", event_id="e-4")]) == 1

    async def after_restart(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        assert await store.append_events(retry) == 0
        assert len(await store.read_events()) == 4

    run(backend, scenario)
    run(backend, after_restart)


def test_events_without_an_id_get_distinct_ones() -> None:
    a, b = ev("u", "i"), ev("u", "i")
    assert a.event_id and b.event_id and a.event_id != b.event_id
    assert Event.from_json(a.to_json()) == a


def test_concurrent_appends_lose_nothing(backend: Backend, versions: Versions) -> None:
    batches = [[ev(f"c{b % 7}", f"i{b}-{j}", ts=b * 100 + j) for j in range(20)] for b in range(50)]

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        counts = await asyncio.gather(*(store.append_events(batch) for batch in batches))
        assert counts == [20] * 50
        logged = await store.read_events()
        assert len(logged) == 1000
        # Every batch is in the log, contiguous and in its own order (batches may interleave only whole).
        starts = {logged.index(batch[0]): batch for batch in batches}
        assert len(starts) == 50
        for start, batch in starts.items():
            assert logged[start : start + 20] == batch
        for u in range(7):
            profile = await store.get_user(f"c{u}")
            mine = {e.item_id for batch in batches for e in batch if e.user_id == f"c{u}"}
            assert profile.seen_item_ids == mine
            assert len(profile.recent_item_ids) == RECENT

    run(backend, scenario)


def test_a_malformed_batch_writes_nothing(backend: Backend, versions: Versions) -> None:
    async def scenario(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        bad = [
            ev("u0", "new-1"),
            ev("u0", "new-2", EventType.RATING, rating=math.nan),
            ev("u0", "new-3"),
        ]
        with pytest.raises(ValueError, match=r"events\[1\]"):
            await store.append_events(bad)
        with pytest.raises(ValueError, match=r"events\[0\]"):
            await store.append_events([ev("", "x")])
        assert await store.read_events() == []
        profile = await store.get_user("u0")
        assert not {"new-1", "new-2", "new-3"} & profile.seen_item_ids

    run(backend, scenario)


def test_rematerializing_the_same_version_is_a_no_op(backend: Backend, versions: Versions) -> None:
    async def scenario(store: OnlineStore) -> None:
        assert await store.materialize(versions.v1.version) is True
        assert await store.materialize(versions.v1.version) is False
        assert store.version == "v1"

    run(backend, scenario)


def test_switching_versions_serves_the_new_one(backend: Backend, versions: Versions) -> None:
    v1, v2 = versions.v1, versions.v2
    only_v1 = [i for i in v1.item_ids if i not in v2.item_ids]
    assert only_v1

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(v1.version)
        await store.append_events([ev("u1", "live-item")])
        assert await store.materialize(v2.version) is True
        assert store.version == "v2"
        values, found = await store.get_items(v2.item_ids)
        assert found.all() and values.tobytes() == v2.item_features.tobytes()
        _, found = await store.get_items(only_v1)
        assert not found.any()
        profile = await store.get_user("u1")
        assert profile.version == "v2"
        assert profile.values.tobytes() == v2.user_features[1].tobytes()
        # Live feedback outlives the switch.
        assert profile.recent_item_ids[0] == "live-item"
        assert profile.seen_item_ids == frozenset(v2.user_history["u1"]) | {"live-item"}
        # And back: the older version is still complete, so nothing has to be rewritten in Redis.
        await store.materialize(v1.version)
        values, _ = await store.get_items(v1.item_ids)
        assert store.version == "v1" and values.tobytes() == v1.item_features.tobytes()

    run(backend, scenario)


def test_a_restarted_store_keeps_the_live_state_and_log(backend: Backend, versions: Versions) -> None:
    events = [
        ev("u2", "a", ts=1),
        ev("u2", "b", EventType.RATING, ts=2),
        ev("u2", "c", EventType.IMPRESSION, ts=3),
    ]

    async def first(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        await store.append_events(events)

    async def second(store: OnlineStore) -> None:
        await store.materialize(versions.v1.version)
        assert await store.read_events() == events
        profile = await store.get_user("u2")
        assert profile.recent_item_ids[:2] == ("b", "a")
        assert {"a", "b"} <= profile.seen_item_ids and "c" not in profile.seen_item_ids

    run(backend, first)
    run(backend, second)


# ---- backend-specific -------------------------------------------------------------------------------


def embedded_backend(tmp_path: Path) -> tuple[Path, Callable[[], EmbeddedStore]]:
    log = tmp_path / "events.jsonl"
    return log, lambda: EmbeddedStore(EmbeddedConfig(event_log=log, recent_max=RECENT))


def test_embedded_batch_failing_midway_leaves_nothing(
    tmp_path: Path, versions: Versions, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, make = embedded_backend(tmp_path)

    async def main() -> None:
        store = make()
        await store.materialize(versions.v1.version)
        await store.append_events([ev("u0", "kept")])
        size = log.stat().st_size

        def half_then_fail(fd: int, data: bytes) -> None:
            import os

            os.write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(store._file, "_write", half_then_fail)
            with pytest.raises(OSError, match="No space left"):
                await store.append_events([ev("u0", "lost-1"), ev("u0", "lost-2"), ev("nobody", "lost-3")])
        assert log.stat().st_size == size  # the partial batch was cut off the file again
        assert [e.item_id for e in await store.read_events()] == ["kept"]
        profile = await store.get_user("u0")
        assert profile.recent_item_ids[0] == "kept"
        assert not {"lost-1", "lost-2"} & profile.seen_item_ids
        assert (await store.get_user("nobody")).seen_item_ids == frozenset()
        # The store still works afterwards.
        await store.append_events([ev("u0", "after")])
        assert [e.item_id for e in await store.read_events()] == ["kept", "after"]

    asyncio.run(main())


def test_a_cancelled_append_is_all_or_nothing(backend: Backend) -> None:
    """A caller cancelled mid-append (a gRPC deadline): the log and the live state still agree."""

    async def scenario(store: OnlineStore) -> None:
        for delay in (0.0, 0.0005, 0.002):
            user = f"cancel-{delay}"
            task = asyncio.ensure_future(store.append_events([ev(user, "x"), ev(user, "y")]))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            logged = [e for e in await store.read_events() if e.user_id == user]
            profile = await store.get_user(user)
            assert len(logged) in (0, 2)
            assert profile.seen_item_ids == ({"x", "y"} if logged else frozenset())

    run(backend, scenario)


def test_embedded_cuts_a_torn_last_line_on_open(tmp_path: Path) -> None:
    log, make = embedded_backend(tmp_path)

    async def main() -> None:
        store = make()
        await store.append_events([ev("u0", "a")])
        with log.open("ab") as f:
            f.write(b'{"user_id":"u0","item_id":"tor')  # a crash mid-write: never acknowledged
        store = make()
        assert [e.item_id for e in await store.read_events()] == ["a"]
        await store.append_events([ev("u0", "b")])
        assert [e.item_id for e in await store.read_events()] == ["a", "b"]
        assert (await store.get_user("u0")).recent_item_ids == ("b", "a")

    asyncio.run(main())


def redis_client(backend: Backend) -> redis.Redis:
    return redis.Redis.from_url(backend.redis_url)


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_redis_layout_is_packed_float32_per_version(redis_backend: Backend, versions: Versions) -> None:
    client = redis_client(redis_backend)
    t = versions.v1

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(t.version)

    run(redis_backend, scenario)
    p = redis_backend.prefix
    for i in (0, 5, len(t.item_ids) - 1):
        blob = client.get(f"{p}:v:v1:item:{t.item_ids[i]}")
        assert blob == t.item_features[i].astype("<f4").tobytes()
    user_blob = client.get(f"{p}:v:v1:user:u3")
    assert user_blob == t.user_features[3].astype("<f4").tobytes()
    assert client.get(f"{p}:current") == b"v1"
    assert client.hget(f"{p}:v:v1:meta", "items") == str(len(t.item_ids)).encode()


def test_redis_round_trips(redis_backend: Backend, versions: Versions) -> None:
    """Real command statistics: get_items is ONE MGET, get_user one pipeline, a batch one script."""
    client = redis_client(redis_backend)
    t = versions.v1

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(t.version)
        await store.get_user("u0")  # connections are opened lazily: open one before counting
        await store.append_events([ev("warm", "up")])  # the script is loaded on its first use
        loop = asyncio.get_running_loop()

        async def counted(coro: Awaitable[object]) -> dict[str, int]:
            before = await loop.run_in_executor(None, command_calls, client)
            await coro
            after = await loop.run_in_executor(None, command_calls, client)
            delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            delta["info"] -= 1
            return {k: v for k, v in delta.items() if v}

        assert await counted(store.get_items(t.item_ids * 8)) == {"mget": 1}
        assert await counted(store.get_user("u0")) == {"mget": 1, "lrange": 1, "smembers": 1}
        writes = await counted(store.append_events([ev("u0", "a"), ev("u0", "b", EventType.IMPRESSION)]))
        # Commands a script runs count in Redis's statistics: one id key per event, then the writes.
        assert writes == {"evalsha": 1, "set": 2, "xadd": 2, "lrem": 1, "lpush": 1, "ltrim": 1, "sadd": 1}

    run(redis_backend, scenario)


def test_redis_skips_a_version_another_instance_completed(redis_backend: Backend, versions: Versions) -> None:
    client = redis_client(redis_backend)
    t = versions.v1

    async def first(store: OnlineStore) -> None:
        assert await store.materialize(t.version) is True

    async def second(store: OnlineStore) -> None:
        # A second replica finds the completion marker: nothing is rewritten, and it serves the version.
        assert await store.materialize(t.version) is False
        values, found = await store.get_items(t.item_ids)
        assert found.all() and values.tobytes() == t.item_features.tobytes()

    run(redis_backend, first)
    run(redis_backend, second)
    # Without the marker (a materialization that died midway) the version is written again.
    client.delete(f"{redis_backend.prefix}:v:v1:meta")
    run(redis_backend, first)


def test_redis_deletes_versions_beyond_the_newest_two(redis_backend: Backend, versions: Versions) -> None:
    client = redis_client(redis_backend)

    async def scenario(store: OnlineStore) -> None:
        for v in (versions.v1, versions.v2, versions.v3):
            await store.materialize(v.version)

    run(redis_backend, scenario)
    p = redis_backend.prefix
    assert list(client.scan_iter(match=f"{p}:v:v1:*")) == []
    assert len(list(client.scan_iter(match=f"{p}:v:v2:*", count=1000))) > 0
    assert len(list(client.scan_iter(match=f"{p}:v:v3:*", count=1000))) > 0
    assert client.zrange(f"{p}:versions", 0, -1) == [b"v2", b"v3"]


def retention_backend(request: pytest.FixtureRequest, tmp_path: Path, **retention: Any) -> Backend:
    """The backend of the test's `kind` parameter with retention settings."""
    if request.node.callspec.params["kind"] == "embedded":
        log = tmp_path / "events.jsonl"
        config = EmbeddedConfig(event_log=log, recent_max=RECENT, checkpoint_every=50, **retention)
        return Backend("embedded", lambda: EmbeddedStore(config))
    url: str = request.getfixturevalue("redis_url")
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    redis_config = RedisConfig(url=url, prefix=prefix, recent_max=RECENT, **retention)
    return Backend("redis", lambda: RedisStore(redis_config), url, prefix)


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_retention_keeps_the_newest_and_never_what_was_not_consumed(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    backend = retention_backend(request, tmp_path, events_max_len=50)
    events = [ev(f"u{n % 7}", f"i{n}", ts=n) for n in range(100)]

    async def scenario(store: OnlineStore) -> None:
        await store.append_events(events[:30])
        consumed = await store.log_position()  # the trainer read the first 30
        await store.mark_consumed(consumed)
        await store.append_events(events[30:])
        assert await store.trim_events(time.time()) == 30  # not 50: 30..49 were not consumed
        assert await store.read_events() == events[30:]
        await store.mark_consumed(await store.log_position())
        assert await store.trim_events(time.time()) == 20
        assert await store.read_events() == events[50:]
        with pytest.raises(ValueError, match="log position"):
            await store.mark_consumed("not-a-position")

    async def after_restart(store: OnlineStore) -> None:
        assert await store.read_events() == events[50:]
        # The live state is not trimmed with the log.
        profile = await store.get_user("u0")
        assert profile.seen_item_ids == {e.item_id for e in events if e.user_id == "u0"}

    run(backend, scenario)
    run(backend, after_restart)


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_retention_by_age(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    backend = retention_backend(request, tmp_path, events_max_age_s=3600.0)
    events = [ev("u0", f"i{n}", ts=n) for n in range(20)]

    async def scenario(store: OnlineStore) -> None:
        await store.append_events(events)
        assert await store.trim_events(time.time()) == 0  # all of them younger than an hour
        assert await store.trim_events(time.time() + 7200) == 20  # two hours on: all older (no consumer)
        assert await store.read_events() == []

    run(backend, scenario)


def test_embedded_start_up_reads_only_the_log_after_its_checkpoint(tmp_path: Path) -> None:
    """Proof by a damaged early line: start-up never parses it, because the checkpoint covers it."""
    log = tmp_path / "events.jsonl"
    config = EmbeddedConfig(event_log=log, recent_max=RECENT, checkpoint_every=10)
    events = [ev("u0", f"i{n}", ts=n) for n in range(25)]

    async def first(store: OnlineStore) -> None:
        for e in events:
            await store.append_events([e])

    run(Backend("embedded", lambda: EmbeddedStore(config)), first)  # closing checkpoints too
    lines = log.read_bytes().splitlines(keepends=True)
    prefix = lines[0][: lines[0].index(b",") + 1]  # {"seq":1,
    lines[0] = prefix + b"x" * (len(lines[0]) - len(prefix) - 1) + b"\n"
    log.write_bytes(b"".join(lines))

    async def second(store: OnlineStore) -> None:
        profile = await store.get_user("u0")
        assert profile.recent_item_ids == tuple(f"i{n}" for n in range(24, 24 - RECENT, -1))
        assert await store.append_events([events[3]]) == 0  # its id remembered from the checkpoint

    run(Backend("embedded", lambda: EmbeddedStore(config)), second)


def test_repair_rewrites_what_the_backend_lost(backend: Backend, versions: Versions) -> None:
    t = versions.v1

    async def scenario(store: OnlineStore) -> None:
        await store.materialize(t.version)
        assert await store.repair() == []  # nothing lost yet
        if backend.name == "redis":
            # What a Redis restarted without persistence looks like: every key of the prefix gone.
            client = redis_client(backend)
            client.delete(*client.keys(f"{backend.prefix}:*"))
            assert not (await store.get_items(t.item_ids[:3]))[1].any()
            assert await store.repair() == ["v1"]
        values, found = await store.get_items(t.item_ids)
        assert found.all() and values.tobytes() == t.item_features.tobytes()
        assert (await store.get_user(t.user_ids[0])).known

    run(backend, scenario)
