"""Where the live catalogue is kept: one interface, two backends, like the online store.

    upsert(items)            -> version     add or replace items whole (their hidden flag stays)
    set_hidden(ids, hidden)  -> (changed, version)
    changes(after)           -> (entries changed after `after`, oldest first; the current version)
    current()                -> version

A write is all or nothing and gets one new catalogue version; a write that changes nothing keeps the
version. Backends: `FileCatalogue` (the in-process store's: a JSON-lines file next to the event log, one
line per write, fsynced before the ack) and `RedisCatalogue` (beside the Redis store's keys):

    p:catalogue:version    the catalogue version (INCR once per write)
    p:catalogue:items      hash item_id -> the upserted item's JSON
    p:catalogue:hidden     set of hidden item ids
    p:catalogue:changes    sorted set item_id -> the version of its last change
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import redis.asyncio as aioredis

from services.common.catalogue import CatalogueItem, Entry, with_hidden, with_item


@runtime_checkable
class CatalogueStore(Protocol):
    async def upsert(self, items: Sequence[CatalogueItem]) -> int: ...

    async def set_hidden(self, item_ids: Sequence[str], hide: bool) -> tuple[int, int]: ...

    async def changes(self, after: int) -> tuple[list[Entry], int]: ...

    async def current(self) -> int: ...

    async def close(self) -> None: ...


class FileCatalogue:
    """The catalogue in memory, every write a line of `path` (a torn last line, never acknowledged, is
    ignored on open)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, Entry] = {}
        self.version = 0
        self._lock = asyncio.Lock()
        self._replay()

    def _replay(self) -> None:
        entries, self.version, good = replayed(self.path)
        self._entries = {e.item.item_id: e for e in entries}
        if self.path.is_file() and good != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good)

    def _write(self, entries: list[Entry], version: int) -> None:
        line = json.dumps({"version": version, "entries": [e.to_json() for e in entries]}) + "\n"
        with self.path.open("ab") as f:
            start = f.tell()
            try:
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                f.truncate(start)
                raise

    async def _commit(self, entries: list[Entry], version: int) -> None:
        await asyncio.to_thread(self._write, entries, version)
        for entry in entries:  # only once the write is durable
            self._entries[entry.item.item_id] = entry
        self.version = version

    async def upsert(self, items: Sequence[CatalogueItem]) -> int:
        async with self._lock:
            version = self.version + 1
            await self._commit([with_item(self._entries.get(i.item_id), i, version) for i in items], version)
            return version

    async def set_hidden(self, item_ids: Sequence[str], hide: bool) -> tuple[int, int]:
        async with self._lock:
            version = self.version + 1
            changed = [
                with_hidden(self._entries.get(i), i, hide, version)
                for i in dict.fromkeys(item_ids)
                if (self._entries[i].hidden if i in self._entries else False) != hide
            ]
            if changed:
                await self._commit(changed, version)
            return len(changed), self.version

    async def changes(self, after: int) -> tuple[list[Entry], int]:
        async with self._lock:
            found = sorted((e for e in self._entries.values() if e.version > after), key=lambda e: e.version)
            return found, self.version

    async def current(self) -> int:
        return self.version

    async def close(self) -> None:
        return None


def replayed(path: Path) -> tuple[list[Entry], int, int]:
    """A catalogue file read, without changing it: (each item's latest entry, the catalogue version, the
    bytes up to the first torn line)."""
    entries: dict[str, Entry] = {}
    version = good = 0
    if not path.is_file():
        return [], 0, 0
    with path.open("rb") as f:
        for line in f:
            try:
                batch = json.loads(line)
                written = [Entry.from_json(e) for e in batch["entries"]]
            except (ValueError, KeyError, TypeError):
                break  # a torn last write
            good += len(line)
            for entry in written:
                entries[entry.item.item_id] = entry
            version = max(version, int(batch["version"]))
    return list(entries.values()), version, good


#: KEYS: version, items hash, changes zset. ARGV: pairs of (item id, item JSON).
UPSERT = """
local v = redis.call('INCR', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], v, ARGV[i])
end
return v
"""

#: KEYS: version, hidden set, changes zset. ARGV: "1" to hide / "0" to show, then the ids.
SET_HIDDEN = """
local changed = {}
for i = 2, #ARGV do
  local n
  if ARGV[1] == '1' then n = redis.call('SADD', KEYS[2], ARGV[i]) else n = redis.call('SREM', KEYS[2], ARGV[i]) end
  if n == 1 then table.insert(changed, ARGV[i]) end
end
if #changed == 0 then return {0, tonumber(redis.call('GET', KEYS[1]) or '0')} end
local v = redis.call('INCR', KEYS[1])
for _, id in ipairs(changed) do redis.call('ZADD', KEYS[3], v, id) end
return {#changed, v}
"""


class RedisCatalogue:
    """The catalogue in Redis, on the online store's connection (its URL, AUTH and TLS)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.redis = client
        self._keys = [f"{prefix}:catalogue:{k}" for k in ("version", "items", "hidden", "changes")]
        self._upsert = client.register_script(UPSERT)
        self._set_hidden = client.register_script(SET_HIDDEN)

    async def upsert(self, items: Sequence[CatalogueItem]) -> int:
        version, items_key, _, changes_key = self._keys
        args = [v for i in items for v in (i.item_id, json.dumps(i.to_json(), ensure_ascii=False))]
        return int(await self._upsert(keys=[version, items_key, changes_key], args=args))

    async def set_hidden(self, item_ids: Sequence[str], hide: bool) -> tuple[int, int]:
        version, _, hidden_key, changes_key = self._keys
        args = ["1" if hide else "0", *dict.fromkeys(item_ids)]
        changed, now = await self._set_hidden(keys=[version, hidden_key, changes_key], args=args)
        return int(changed), int(now)

    async def changes(self, after: int) -> tuple[list[Entry], int]:
        version_key, items_key, hidden_key, changes_key = self._keys
        # One transaction: the entries and the version are read at the same instant.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrangebyscore(changes_key, f"({after}", "+inf", withscores=True)
            pipe.get(version_key)
            changed, version = await pipe.execute()
        if not changed:
            return [], int(version or 0)
        ids = [_text(i) for i, _ in changed]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(items_key, ids)
            pipe.smismember(hidden_key, ids)
            raw, flags = await pipe.execute()
        entries = []
        for (item_id, score), item, flag in zip(changed, raw, flags, strict=True):
            upserted = item is not None
            data: Any = json.loads(item) if upserted else {"item_id": _text(item_id)}
            entries.append(Entry(CatalogueItem.from_json(data), upserted, bool(flag), int(score)))
        return entries, int(version or 0)

    async def current(self) -> int:
        return int(await self.redis.get(self._keys[0]) or 0)

    async def close(self) -> None:
        return None  # the connection is the online store's


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
