"""One contract for every live-catalogue backend (services.features.catalogue), run against each: the
in-process file and a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.common.catalogue import CatalogueItem, Entry, MirrorState
from services.features.catalogue import CatalogueStore, FileCatalogue, RedisCatalogue


@dataclass(frozen=True)
class Backend:
    name: str
    #: a new store over the same durable state (a reopened file, a new connection to the same prefix)
    open: Callable[[], CatalogueStore]


@pytest.fixture(params=["file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        path = tmp_path / "var" / "catalogue.jsonl"
        return Backend("file", lambda: FileCatalogue(path))
    url = request.getfixturevalue("redis_url")
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    return Backend("redis", lambda: RedisCatalogue(aioredis.Redis.from_url(url), prefix))


def run(backend: Backend, scenario: Callable[[CatalogueStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = backend.open()
        try:
            await scenario(store)
        finally:
            await store.close()
            if isinstance(store, RedisCatalogue):
                await store.redis.aclose()

    asyncio.run(main())


def item(item_id: str, **kw: object) -> CatalogueItem:
    return CatalogueItem(item_id, **kw)  # type: ignore[arg-type]


def by_id(entries: list[Entry]) -> dict[str, Entry]:
    return {e.item.item_id: e for e in entries}


def test_backends_satisfy_the_protocol(backend: Backend) -> None:
    async def scenario(store: CatalogueStore) -> None:
        assert isinstance(store, CatalogueStore)
        assert await store.current() == 0
        assert await store.changes(0) == ([], 0)

    run(backend, scenario)


def test_an_upsert_is_one_version_and_replaces_an_item_whole(backend: Backend) -> None:
    async def scenario(store: CatalogueStore) -> None:
        first = item(
            "a", title="A", categories=("Comedy", "Drama"), tags=("funny",), attributes={"lang": "en"}
        )
        v1 = await store.upsert([first, item("b", published_at_ms=5)])
        assert v1 == 1 and await store.current() == 1
        v2 = await store.upsert([item("a", title="A2", categories=("Horror",))])
        assert v2 == 2
        entries, version = await store.changes(0)
        assert version == 2
        found = by_id(entries)
        # replaced whole: no category, tag or attribute of the first upsert is left
        assert found["a"] == Entry(item("a", title="A2", categories=("Horror",)), True, False, 2)
        assert found["b"] == Entry(item("b", published_at_ms=5), True, False, 1)
        assert [e.version for e in entries] == sorted(e.version for e in entries)  # oldest change first

    run(backend, scenario)


def test_changes_after_a_version_hold_only_what_changed_since(backend: Backend) -> None:
    async def scenario(store: CatalogueStore) -> None:
        await store.upsert([item("a"), item("b")])
        await store.upsert([item("c")])
        await store.set_hidden(["a"], True)
        entries, version = await store.changes(2)
        assert version == 3
        assert sorted(by_id(entries)) == ["a"] and entries[0].hidden and entries[0].upserted
        assert (await store.changes(3)) == ([], 3)

    run(backend, scenario)


def test_hiding_a_trained_item_and_a_write_that_changes_nothing(backend: Backend) -> None:
    async def scenario(store: CatalogueStore) -> None:
        assert await store.set_hidden(["trained", "trained"], True) == (1, 1)
        assert await store.set_hidden(["trained"], True) == (0, 1)  # already hidden: same version
        entries, _ = await store.changes(0)
        assert entries == [Entry(item("trained"), False, True, 1)]
        # an upsert keeps the hidden flag; unhiding shows it again
        await store.upsert([item("trained", title="T")])
        assert by_id((await store.changes(0))[0])["trained"].hidden
        assert await store.set_hidden(["trained", "never-seen"], False) == (1, 3)
        state = MirrorState().applied(*(await store.changes(0)))
        assert state.hidden == frozenset() and state.version == 3
        assert [i.item_id for i in state.upserted()] == ["trained"]

    run(backend, scenario)


def test_the_catalogue_survives_a_reopen(backend: Backend) -> None:
    async def write(store: CatalogueStore) -> None:
        await store.upsert([item("a", categories=("Comedy",))])
        await store.set_hidden(["b"], True)

    async def read(store: CatalogueStore) -> None:
        entries, version = await store.changes(0)
        assert version == 2
        assert by_id(entries)["a"].item.categories == ("Comedy",) and by_id(entries)["b"].hidden
        assert await store.upsert([item("c")]) == 3

    run(backend, write)
    run(backend, read)


def test_a_torn_last_write_of_the_file_is_dropped_on_open(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.jsonl"

    async def scenario() -> None:
        await FileCatalogue(path).upsert([item("a")])
        with path.open("ab") as f:
            f.write(b'{"version": 2, "entries": [{"item": {"item_id": "b"')  # a crash mid-write
        reopened = FileCatalogue(path)
        entries, version = await reopened.changes(0)
        assert version == 1 and [e.item.item_id for e in entries] == ["a"]
        assert await reopened.upsert([item("b")]) == 2
        assert [e.item.item_id for e in (await FileCatalogue(path).changes(0))[0]] == ["a", "b"]

    asyncio.run(scenario())
