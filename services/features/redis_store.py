"""The Redis online store (redis.asyncio with hiredis).

Keys (`p` = the configured prefix, default "recsys"; `V` = an artifact version):

    p:v:V:item:<item_id>   item feature row: packed little-endian float32 (`np.float32.tobytes()`)
    p:v:V:user:<user_id>   the user's feature row: packed float32
    p:v:V:hist:<user_id>   the user's training history, JSON list, most recent first
    p:v:V:meta             hash: dims and counts; written LAST, so it is the version's completion marker
    p:current              the version materialized last (informational)
    p:versions             sorted set of complete versions, scored by completion time
    p:events               Stream: the append-only event log (XADD, one entry per event); retention
                           (`trim_events`) drops the oldest past an age or a count, never an entry
                           after p:events:consumed
    p:events:consumed      the id of the last entry the trainer consumed (set by `mark_consumed`)
    p:live:recent:<user>   list: the user's live clicked/rated items, newest first (LREM+LPUSH+LTRIM)
    p:live:seen:<user>     set: every item the user clicked or rated live
    p:eid:<event_id>       an event id written within the idempotency window (expires)

Round trips: `get_items` is one MGET; `get_user` is one non-transactional pipeline; `append_events` is
one script (atomic: all of the batch's new events or none); `materialize` writes MSET batches over a pipeline (`batch_size` keys per round trip).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError

from services.common.artifacts import ArtifactVersion
from services.common.event_ids import new_event_id
from services.common.server import StartupError
from services.features.store import (
    EMPTY,
    IDEMPOTENCY_WINDOW_S,
    RECENT_MAX,
    ArtifactTables,
    BoolArray,
    Event,
    EventType,
    FloatArray,
    UserProfile,
    VersionNotServed,
    check_events,
    merge_recent,
    read_tables,
)

log = logging.getLogger(__name__)

#: append_events in one atomic step. KEYS: the stream, then per event its id key, recent list and seen
#: set. ARGV: recent limit, idempotency window (s), then per event 10 values:
#: interacts ("1" or ""), event id, user, item, type, rating, timestamp, context, experiment, arm.
APPEND_EVENTS = """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local written = 0
for i = 0, (#KEYS - 1) / 3 - 1 do
  local a = 3 + i * 10
  local id_key, recent, seen = KEYS[2 + i * 3], KEYS[3 + i * 3], KEYS[4 + i * 3]
  if redis.call('SET', id_key, '1', 'NX', 'EX', window) then
    local entry = {'event_id', ARGV[a + 1], 'user_id', ARGV[a + 2], 'item_id', ARGV[a + 3],
                   'type', ARGV[a + 4], 'rating', ARGV[a + 5], 'timestamp_ms', ARGV[a + 6],
                   'context', ARGV[a + 7], 'experiment', ARGV[a + 8], 'arm', ARGV[a + 9]}
    redis.call('XADD', KEYS[1], '*', unpack(entry))
    if ARGV[a] == '1' then
      redis.call('LREM', recent, 0, ARGV[a + 3])
      redis.call('LPUSH', recent, ARGV[a + 3])
      redis.call('LTRIM', recent, 0, limit - 1)
      redis.call('SADD', seen, ARGV[a + 3])
    end
    written = written + 1
  end
end
return written
"""

#: Stream entries read per retention round when trimming by count.
TRIM_BATCH = 10_000
#: Keys per MSET command (several of them go into one pipelined round trip).
MSET_KEYS = 1000
#: Stream entries per XRANGE page when reading the log.
READ_PAGE = 10_000


@dataclass(frozen=True)
class RedisConfig:
    url: str
    #: Namespace of every key, so several deployments (or tests) can share one Redis.
    prefix: str = "recsys"
    #: Recent items per user (live feedback + history).
    recent_max: int = RECENT_MAX
    #: Keys written per pipelined round trip while materializing.
    batch_size: int = 10_000
    #: Complete versions kept in Redis; older ones are deleted after a switch (never the served one).
    keep_versions: int = 2
    #: Retention (`trim_events`): drop entries older than this (0: any age) or beyond this many of the
    #: newest (0: any count), never past the consumer's mark.
    events_max_age_s: float = 0.0
    events_max_len: int = 0
    #: How long an event id is remembered (one small key per event, expiring).
    idempotency_window_s: int = IDEMPOTENCY_WINDOW_S
    connect_timeout_s: float = 2.0
    socket_timeout_s: float = 30.0
    #: With a rediss:// URL: PEM CA certificates the server's certificate chains to (None: the system's),
    #: and the certificate and key to present when Redis requires client certificates (tls-auth-clients).
    tls_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments: timeouts, and the TLS files (read at each new connection)."""
        kwargs: dict[str, Any] = {}
        for name, path in (
            ("ssl_ca_certs", self.tls_ca),
            ("ssl_certfile", self.tls_client_cert),
            ("ssl_keyfile", self.tls_client_key),
        ):
            if path is not None:
                kwargs[name] = str(path)
        return kwargs


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(error: BaseException) -> str:
    """The most specific cause: 'Connection refused' rather than redis's 'Error 111 connecting to ...'."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return str(error) or type(error).__name__


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_reachable(config: RedisConfig) -> None:
    """PING Redis synchronously (start-up, before the event loop serves); StartupError when it fails."""
    try:
        client = redis.Redis.from_url(
            config.url,
            socket_connect_timeout=config.connect_timeout_s,
            socket_timeout=config.connect_timeout_s,
            **config.client_kwargs(),
        )
    except ValueError as e:
        raise StartupError(f"invalid Redis URL {redact(config.url)}: {e}") from None
    try:
        client.ping()
    except AuthenticationError as e:
        # Redis's own words ("invalid username-password pair", "Authentication required"), never the password
        raise StartupError(f"Redis at {redact(config.url)} refused to authenticate: {e}") from None
    except (RedisError, OSError) as e:
        hint = ""
        if config.tls_client_cert is None and _caused_by(e, ssl.SSLError):
            # A Redis with tls-auth-clients ends the handshake, sometimes before the client reads why.
            hint = " (a Redis that requires client certificates needs --redis-tls-client-cert/-key)"
        raise StartupError(f"cannot reach Redis at {redact(config.url)}: {_reason(e)}{hint}") from None
    finally:
        client.close()


def _stream_id(text: str) -> tuple[int, int]:
    """A stream entry id "<ms>-<seq>" as a pair (ValueError naming it otherwise)."""
    ms, dash, seq = text.partition("-")
    if not (dash and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"log position {text!r}: expected a stream id <ms>-<seq>")
    return int(ms), int(seq)


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


@dataclass(frozen=True)
class _Served:
    version: str
    item_dim: int
    feature_dim: int


class RedisStore:
    """`OnlineStore` on Redis."""

    def __init__(self, config: RedisConfig, *, check: bool = True) -> None:
        if check:
            check_reachable(config)
        self.config = config
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            config.url,
            socket_connect_timeout=config.connect_timeout_s,
            socket_timeout=config.socket_timeout_s,
            **config.client_kwargs(),
        )
        self._served: _Served | None = None
        self._pinned: dict[str, _Served] = {}
        #: Where each served or pinned version came from, to rewrite it if Redis loses it.
        self._sources: dict[str, ArtifactVersion] = {}
        self._materialize_lock = asyncio.Lock()
        p = config.prefix
        self._events_key = f"{p}:events"
        self._consumed_key = f"{p}:events:consumed"
        self._current_key = f"{p}:current"
        self._versions_key = f"{p}:versions"
        self._append = self.redis.register_script(APPEND_EVENTS)

    # ---- keys -----------------------------------------------------------------------------------

    def _vkey(self, version: str, kind: str, ident: str = "") -> str:
        base = f"{self.config.prefix}:v:{version}:{kind}"
        return f"{base}:{ident}" if kind != "meta" else base

    def _recent_key(self, user_id: str) -> str:
        return f"{self.config.prefix}:live:recent:{user_id}"

    def _seen_key(self, user_id: str) -> str:
        return f"{self.config.prefix}:live:seen:{user_id}"

    def _event_id_key(self, event_id: str) -> str:
        return f"{self.config.prefix}:eid:{event_id}"

    # ---- served version -------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        return None if self._served is None else self._served.version

    @property
    def item_dim(self) -> int:
        return 0 if self._served is None else self._served.item_dim

    async def materialize(self, version: ArtifactVersion) -> bool:
        async with self._materialize_lock:
            if self._served is not None and self._served.version == version.version:
                return False
            name = version.version
            served, written = await self._ensure(version)
            self._served = served  # one assignment: reads switch to the new version here
            self._sources = {n: v for n, v in self._sources.items() if n in self._pinned} | {name: version}
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._current_key, name)
                pipe.zadd(self._versions_key, {name: time.time()}, nx=True)
                await pipe.execute()
            await self._prune(keep=name)
            return written

    async def pin(self, version: ArtifactVersion) -> None:
        async with self._materialize_lock:
            if version.version in self._pinned:
                return
            served, _ = await self._ensure(version)
            self._pinned = {**self._pinned, version.version: served}
            self._sources = {**self._sources, version.version: version}
            await self.redis.zadd(self._versions_key, {version.version: time.time()}, nx=True)

    def unpin(self, name: str) -> None:
        self._pinned = {k: v for k, v in self._pinned.items() if k != name}
        if self._served is None or self._served.version != name:
            self._sources = {k: v for k, v in self._sources.items() if k != name}

    async def repair(self) -> list[str]:
        """Rewrite every served or pinned version whose completion marker is gone (Redis restarted
        without persistence, or flushed); returns the versions rewritten."""
        repaired = []
        async with self._materialize_lock:
            for name, source in list(self._sources.items()):
                if not await self.redis.exists(self._vkey(name, "meta")):
                    await self._ensure(source)
                    repaired.append(name)
        return repaired

    def _version(self, version: str) -> _Served | None:
        served = self._served
        if not version or (served is not None and served.version == version):
            return served
        pinned = self._pinned.get(version)
        if pinned is None:
            names = ([served.version] if served is not None else []) + sorted(self._pinned)
            raise VersionNotServed(version, names)
        return pinned

    async def _ensure(self, version: ArtifactVersion) -> tuple[_Served, bool]:
        """The version's keys complete in Redis (written unless another instance did); True if written."""
        name = version.version
        meta: Any = await self.redis.hgetall(self._vkey(name, "meta"))
        written = not meta
        if written:
            tables = await asyncio.to_thread(read_tables, version)
            started = time.perf_counter()
            await self._write(tables)
            served = _Served(
                name,
                int(tables.item_features.shape[1]),
                int(tables.user_features.shape[1]),
            )
            log.info(
                "materialized version into Redis",
                extra={
                    "version": name,
                    "items": len(tables.item_ids),
                    "users": len(tables.user_ids),
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        else:
            served = _Served(
                name,
                int(meta[b"item_dim"]),
                int(meta[b"feature_dim"]),
            )
        return served, written

    def _rows(self, tables: ArtifactTables) -> Iterator[tuple[str, bytes]]:
        name = tables.version
        features = tables.item_features.astype("<f4", copy=False)
        for i, item in enumerate(tables.item_ids):
            yield self._vkey(name, "item", item), features[i].tobytes()
        users = tables.user_features.astype("<f4", copy=False)
        for i, user in enumerate(tables.user_ids):
            yield self._vkey(name, "user", user), users[i].tobytes()
        for user, items in tables.user_history.items():
            yield self._vkey(name, "hist", user), json.dumps(items, separators=(",", ":")).encode()

    async def _write(self, tables: ArtifactTables) -> None:
        """MSET batches, `batch_size` keys per pipelined round trip; the meta marker last."""
        pipe = self.redis.pipeline(transaction=False)
        chunk: dict[str, bytes] = {}
        pending = 0
        per_mset = max(1, min(MSET_KEYS, self.config.batch_size))
        for key, value in self._rows(tables):
            chunk[key] = value
            if len(chunk) >= per_mset:
                pipe.mset(chunk)
                pending += len(chunk)
                chunk = {}
                if pending >= self.config.batch_size:
                    await pipe.execute()
                    pending = 0
        if chunk:
            pipe.mset(chunk)
        await pipe.execute()
        meta: dict[Any, Any] = {
            "item_dim": tables.item_features.shape[1],
            "feature_dim": tables.user_features.shape[1],
            "items": len(tables.item_ids),
            "users": len(tables.user_ids),
            "completed_at": time.time(),
        }
        await self.redis.hset(self._vkey(tables.version, "meta"), mapping=meta)

    async def _prune(self, keep: str) -> None:
        """Delete complete versions beyond the newest `keep_versions` (never `keep`, the served one)."""
        raw: Any = await self.redis.zrevrange(self._versions_key, 0, -1)
        names = [n.decode() for n in raw]
        # Never the served one, nor one this instance keeps pinned for an experiment arm.
        stale = [n for n in names[max(self.config.keep_versions, 1) :] if n != keep and n not in self._pinned]
        for name in stale:
            # The marker goes first: a half-deleted version reads as incomplete and would be rewritten.
            await self.redis.delete(self._vkey(name, "meta"))
            await self.redis.zrem(self._versions_key, name)
            pattern = _glob_escape(f"{self.config.prefix}:v:{name}:") + "*"
            batch: list[bytes] = []
            async for key in self.redis.scan_iter(match=pattern, count=self.config.batch_size):
                batch.append(key)
                if len(batch) >= self.config.batch_size:
                    await self.redis.unlink(*batch)
                    batch = []
            if batch:
                await self.redis.unlink(*batch)
            log.info("deleted an old version from Redis", extra={"version": name})

    # ---- reads ----------------------------------------------------------------------------------

    async def get_user(self, user_id: str, version: str = "") -> UserProfile:
        served = self._version(version)
        limit = self.config.recent_max
        async with self.redis.pipeline(transaction=False) as pipe:
            if served is not None:
                pipe.mget(
                    self._vkey(served.version, "user", user_id), self._vkey(served.version, "hist", user_id)
                )
            pipe.lrange(self._recent_key(user_id), 0, limit - 1)
            pipe.smembers(self._seen_key(user_id))
            replies: list[Any] = await pipe.execute()
        vector, history_json = replies[0] if served is not None else (None, None)
        live: list[bytes] = replies[-2]
        live_seen: set[bytes] = replies[-1]
        history: list[str] = json.loads(history_json) if history_json is not None else []
        values = EMPTY
        if served is not None and vector is not None:
            values = np.frombuffer(vector, dtype="<f4")
            if values.size != served.feature_dim:
                raise RuntimeError(f"user {user_id!r}: stored feature row has {values.size} values")
        return UserProfile(
            user_id=user_id,
            known=vector is not None,
            values=values,
            recent_item_ids=merge_recent((b.decode() for b in live), history, limit),
            seen_item_ids=frozenset(history).union(b.decode() for b in live_seen),
            version=served.version if served is not None else "",
        )

    async def get_items(self, item_ids: Sequence[str], version: str = "") -> tuple[FloatArray, BoolArray]:
        served = self._version(version)
        n = len(item_ids)
        if served is None or n == 0:
            dim = 0 if served is None else served.item_dim
            return np.empty((n, dim), dtype=np.float32), np.zeros(n, dtype=bool)
        base = self._vkey(served.version, "item", "")
        blobs: list[Any] = await self.redis.mget([base + i for i in item_ids])  # ONE round trip
        found = np.array([b is not None for b in blobs], dtype=bool)
        out = np.full((n, served.item_dim), np.nan, dtype=np.float32)
        if found.any():
            packed = b"".join(b for b in blobs if b is not None)
            rows = np.frombuffer(packed, dtype="<f4")
            if rows.size != int(found.sum()) * served.item_dim:
                raise RuntimeError(
                    f"item rows of version {served.version} do not have {served.item_dim} values"
                )
            out[found] = rows.reshape(-1, served.item_dim)
        return out, found

    # ---- events ---------------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> int:
        check_events(events)
        if not events:
            return 0
        keys = [self._events_key]
        args: list[str | int] = [self.config.recent_max, self.config.idempotency_window_s]
        for e in events:
            keys += [self._event_id_key(e.event_id), self._recent_key(e.user_id), self._seen_key(e.user_id)]
            args += [
                "1" if e.type.interacts else "",
                e.event_id,
                e.user_id,
                e.item_id,
                e.type.value,
                "" if e.rating is None else repr(e.rating),
                str(e.timestamp_ms),
                json.dumps(dict(e.context), separators=(",", ":")),
                e.experiment,
                e.arm,
            ]
        return int(await self._append(keys=keys, args=args))

    async def log_position(self) -> str:
        last: Any = await self.redis.xrevrange(self._events_key, count=1)
        return str(last[0][0].decode()) if last else "0-0"

    async def mark_consumed(self, position: str) -> None:
        _stream_id(position)
        await self.redis.set(self._consumed_key, position)

    async def trim_events(self, now_s: float) -> int:
        cutoff: tuple[int, int] | None = None
        if self.config.events_max_age_s:
            cutoff = (int((now_s - self.config.events_max_age_s) * 1000), 0)
        if self.config.events_max_len:
            excess = int(await self.redis.xlen(self._events_key)) - self.config.events_max_len
            if excess > 0:
                # At most TRIM_BATCH entries per call: reading the ids to cut at stays cheap.
                page: Any = await self.redis.xrange(self._events_key, count=min(excess, TRIM_BATCH))
                ms, seq = _stream_id(page[-1][0].decode())
                cutoff = max(cutoff or (0, 0), (ms, seq + 1))
        if cutoff is None:
            return 0
        consumed: Any = await self.redis.get(self._consumed_key)
        if consumed is not None:
            ms, seq = _stream_id(consumed.decode())
            cutoff = min(cutoff, (ms, seq + 1))
        return int(
            await self.redis.xtrim(self._events_key, minid=f"{cutoff[0]}-{cutoff[1]}", approximate=False)
        )

    async def read_events(self) -> list[Event]:
        out: list[Event] = []
        start = "-"
        while True:
            page: Any = await self.redis.xrange(self._events_key, min=start, max="+", count=READ_PAGE)
            for _, fields in page:
                f = {k.decode(): v.decode() for k, v in fields.items()}
                out.append(
                    Event(
                        user_id=f["user_id"],
                        item_id=f["item_id"],
                        type=EventType(f["type"]),
                        timestamp_ms=int(f["timestamp_ms"]),
                        rating=float(f["rating"]) if f["rating"] else None,
                        context=json.loads(f["context"]),
                        experiment=f.get("experiment", ""),
                        arm=f.get("arm", ""),
                        event_id=f.get("event_id") or new_event_id(),
                    )
                )
            if len(page) < READ_PAGE:
                return out
            start = "(" + page[-1][0].decode()

    async def close(self) -> None:
        await self.redis.aclose()
