"""FeatureService: user profiles, item feature rows and the event log over gRPC, on an `OnlineStore`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from redis.exceptions import RedisError

from recsys.v1 import common_pb2, features_pb2, features_pb2_grpc
from services.common.artifacts import ArtifactVersion
from services.common.catalogue import ids_from_request, items_from_request
from services.common.config import ConfigError, non_negative, option, port_number, positive
from services.common.loops import PeriodicTask
from services.common.rpc import (
    NotReady,
    UnknownVersion,
    handler,
    require,
    require_id,
    require_max_len,
)
from services.common.server import ServerConfig, StartupError
from services.common.spool import Spool, SpoolInUse
from services.common.tls import ClientTLS
from services.features.catalogue import CatalogueStore, FileCatalogue, RedisCatalogue
from services.features.embedded import EmbeddedConfig, EmbeddedStore
from services.features.redis_store import RedisConfig, RedisStore
from services.features.requests import events_from_request
from services.features.store import RECENT_MAX, OnlineStore, VersionNotServed
from services.features.writer import EventWriter

log = logging.getLogger(__name__)

MAX_ITEM_IDS = 10_000
#: How often the spool is offered to the store while it holds events.
SPOOL_DRAIN_S = 0.5
#: How often retention runs (when an age or a count is configured).
RETENTION_S = 30.0


@dataclass(frozen=True)
class Config(ServerConfig):
    port: int = option(50052, "port to listen on", port_number)
    redis_url: str | None = option(
        None,
        "Redis URL of the online store, e.g. redis://:PASSWORD@host:6379/0, rediss:// for TLS (unset: "
        "in-process store)",
    )
    redis_tls_ca: Path | None = option(
        None, "rediss:// only: PEM CA certificates Redis's certificate chains to (unset: the system's)"
    )
    redis_tls_client_cert: Path | None = option(
        None, "rediss:// only: PEM certificate to present to a Redis that requires client certificates"
    )
    redis_tls_client_key: Path | None = option(None, "PEM key of --redis-tls-client-cert")
    redis_prefix: str = option("recsys", "namespace of every Redis key")
    event_log: Path = option(
        Path("var/events.jsonl"), "append-only JSON-lines event log of the in-process store"
    )
    catalogue_log: Path | None = option(
        None,
        "the in-process store's live catalogue, upserted and hidden items (default: catalogue.jsonl beside "
        "--event-log)",
    )
    recent_max: int = option(RECENT_MAX, "recent items kept per user (live feedback + history)", positive)
    events_max_len: int = option(
        0,
        "retention: events kept beyond this many of the newest are dropped (0: any count); never one the "
        "trainer has not consumed",
        non_negative,
    )
    events_max_age_days: float = option(
        0.0,
        "retention: events older than this are dropped (0: any age); never one not consumed",
        non_negative,
    )
    spool: Path = option(
        Path("var/spool/events.jsonl"),
        "Redis store only: local file holding accepted events while Redis is unreachable, drained in order",
    )
    spool_max_mb: float = option(256.0, "size limit of the spool; a full spool refuses events", positive)
    store_timeout_ms: float = option(
        250.0, "Redis store only: a write slower than this goes to the spool instead", positive
    )

    def redis_tls(self) -> ClientTLS | None:
        """The --redis-tls-* files (None: none given)."""
        given = (self.redis_tls_ca, self.redis_tls_client_cert, self.redis_tls_client_key)
        return None if all(v is None for v in given) else ClientTLS(*given, flags="--redis-tls")

    def validate(self) -> None:
        super().validate()
        if self.redis_tls() is not None and not (self.redis_url or "").startswith("rediss://"):
            raise ConfigError("--redis-tls-* need a rediss:// --redis-url (RECSYS_REDIS_URL): TLS to Redis")


@asynccontextmanager
async def store_errors() -> AsyncIterator[None]:
    """An unreachable store (Redis down, a network error) is UNAVAILABLE, which clients may retry; an
    artifact version neither served nor pinned is FAILED_PRECONDITION naming it."""
    try:
        yield
    except (RedisError, OSError) as e:
        raise NotReady(f"features: online store unavailable: {e}") from e
    except VersionNotServed as e:
        raise UnknownVersion("features", e.version, e.served) from e


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    def __init__(
        self, store: OnlineStore, catalogue: CatalogueStore, writer: EventWriter | None = None
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self.writer = writer or EventWriter(store)

    def _served(self) -> str:
        version = self.store.version
        if version is None:
            raise NotReady("features: no artifact version loaded yet")
        return version

    @handler("features", "get_user_features")
    async def GetUserFeatures(
        self, request: features_pb2.GetUserFeaturesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> features_pb2.GetUserFeaturesResponse:
        require_id(request.user_id, "user_id")
        self._served()
        async with store_errors():
            # The catalogue version is read before the profile: a change it does not include is newer.
            catalogue_version, profile = await asyncio.gather(
                self.catalogue.current(), self.store.get_user(request.user_id, request.artifact_version)
            )
        return features_pb2.GetUserFeaturesResponse(
            user=common_pb2.UserFeatures(
                user_id=profile.user_id,
                known=profile.known,
                values=profile.values.tolist(),
                recent_item_ids=profile.recent_item_ids,
                seen_item_ids=sorted(profile.seen_item_ids),
            ),
            artifact_version=profile.version,
            catalogue_version=catalogue_version,
        )

    @handler("features", "get_item_features")
    async def GetItemFeatures(
        self, request: features_pb2.GetItemFeaturesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> features_pb2.GetItemFeaturesResponse:
        require_max_len(request.item_ids, "item_ids", MAX_ITEM_IDS)
        version = request.artifact_version or self._served()
        self._served()
        async with store_errors():
            values, found = await self.store.get_items(list(request.item_ids), request.artifact_version)
        return features_pb2.GetItemFeaturesResponse(
            values=values.astype("<f4", copy=False).tobytes(),
            dim=int(values.shape[1]),
            found=found.tolist(),
            artifact_version=version,
        )

    @handler("features", "write_events")
    async def WriteEvents(
        self, request: features_pb2.WriteEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> features_pb2.WriteEventsResponse:
        events = events_from_request(request.events, int(time.time() * 1000))
        self._served()
        async with store_errors():
            await self.writer.write(events)
        # Accepted: every event of the batch is in the log (or the spool), once, whether it was new or
        # a retry of one already written.
        return features_pb2.WriteEventsResponse(written=len(events))

    @handler("features", "upsert_items")
    async def UpsertItems(
        self, request: common_pb2.UpsertItemsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.UpsertItemsResponse:
        items = items_from_request(request.items)
        async with store_errors():
            version = await self.catalogue.upsert(items)
        log.info("items upserted", extra={"items": len(items), "catalogue_version": version})
        return common_pb2.UpsertItemsResponse(upserted=len(items), catalogue_version=version)

    @handler("features", "set_items_hidden")
    async def SetItemsHidden(
        self, request: features_pb2.SetItemsHiddenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.HideItemsResponse:
        ids = ids_from_request(request.item_ids)
        async with store_errors():
            changed, version = await self.catalogue.set_hidden(ids, request.hidden)
        log.info(
            "items hidden" if request.hidden else "items shown",
            extra={"items": len(ids), "changed": changed, "catalogue_version": version},
        )
        return common_pb2.HideItemsResponse(changed=changed, catalogue_version=version)

    @handler("features", "get_catalogue")
    async def GetCatalogue(
        self, request: features_pb2.GetCatalogueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> features_pb2.GetCatalogueResponse:
        require(request.after_version >= 0, "after_version", f"must be >= 0, got {request.after_version}")
        async with store_errors():
            entries, version = await self.catalogue.changes(request.after_version)
        return features_pb2.GetCatalogueResponse(entries=[e.to_proto() for e in entries], version=version)


class FeaturesComponent:
    """The features service as `services.common.server.serve` runs it."""

    name = "features"
    service_name = "recsys.v1.FeatureService"
    needs_artifacts = True

    def __init__(
        self,
        store: OnlineStore,
        catalogue: CatalogueStore,
        writer: EventWriter | None = None,
        repair_interval_s: float = 2.0,
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self.servicer = FeatureServicer(store, catalogue, writer)
        self.writer = self.servicer.writer
        self.repair_interval_s = repair_interval_s
        self._repair: PeriodicTask | None = None
        self._drain: PeriodicTask | None = None
        self._retention: PeriodicTask | None = None

    def add_to_server(self, server: grpc.aio.Server) -> None:
        features_pb2_grpc.add_FeatureServiceServicer_to_server(self.servicer, server)

    async def load(self, version: ArtifactVersion) -> None:
        """Materialize `version` into the store; the store switches reads to it only when complete."""
        await self.store.materialize(version)
        if self._repair is None:
            self._repair = PeriodicTask("store-repair", self._repair_store, self.repair_interval_s)
        if self._drain is None:
            self._drain = PeriodicTask("spool-drain", self.writer.drain, SPOOL_DRAIN_S)
        if self._retention is None:
            self._retention = PeriodicTask("event-retention", self._trim_events, RETENTION_S)

    async def _trim_events(self) -> None:
        try:
            dropped = await self.store.trim_events(time.time())
        except Exception as e:  # the store is away: the next round tries again
            log.warning("event retention failed", extra={"reason": str(e)})
            return
        if dropped:
            log.info("event retention", extra={"dropped": dropped})

    async def _repair_store(self) -> None:
        """Put back what the backend lost (a Redis restarted without persistence comes back empty)."""
        try:
            repaired = await self.store.repair()
        except Exception as e:  # the backend is still down: try again next round
            log.warning("online store repair failed", extra={"reason": str(e)})
            return
        if repaired:
            log.warning("online store had lost versions: rewritten", extra={"versions": repaired})

    async def load_pinned(self, version: ArtifactVersion) -> None:
        """Keep `version` readable beside CURRENT (listed in <artifacts>/PINNED, for experiment arms)."""
        await self.store.pin(version)

    def unpin(self, name: str) -> None:
        self.store.unpin(name)

    async def close(self) -> None:
        for task in (self._repair, self._drain, self._retention):
            if task is not None:
                await task.stop()
        await self.writer.drain()  # what it can deliver now; the rest waits in the spool for the next start
        self.writer.close()
        await self.catalogue.close()
        await self.store.close()


def create(config: Config) -> FeaturesComponent:
    """The component on Redis when `redis_url` is set (PING now: StartupError if unreachable), else in-process."""
    store: OnlineStore
    catalogue: CatalogueStore
    spool: Spool | None = None
    if config.redis_url:
        tls = config.redis_tls()
        if tls is not None:
            try:
                tls.read()  # one line naming a bad file, rather than an OpenSSL error from redis-py
            except ConfigError as e:
                raise StartupError(str(e)) from None
        redis_store = RedisStore(
            RedisConfig(
                url=config.redis_url,
                prefix=config.redis_prefix,
                recent_max=config.recent_max,
                events_max_len=config.events_max_len,
                events_max_age_s=config.events_max_age_days * 86_400,
                tls_ca=config.redis_tls_ca,
                tls_client_cert=config.redis_tls_client_cert,
                tls_client_key=config.redis_tls_client_key,
            )
        )
        store, catalogue = redis_store, RedisCatalogue(redis_store.redis, config.redis_prefix)
        try:
            spool = Spool(config.spool, max_bytes=int(config.spool_max_mb * 2**20))
        except (SpoolInUse, OSError) as e:
            raise StartupError(f"--spool {config.spool}: {e}") from None
    else:
        store = EmbeddedStore(
            EmbeddedConfig(
                event_log=config.event_log,
                recent_max=config.recent_max,
                events_max_len=config.events_max_len,
                events_max_age_s=config.events_max_age_days * 86_400,
            )
        )
        catalogue = FileCatalogue(config.catalogue_log or config.event_log.with_name("catalogue.jsonl"))
    writer = EventWriter(store, spool, store_timeout_s=config.store_timeout_ms / 1000)
    return FeaturesComponent(store, catalogue, writer, repair_interval_s=config.reload_interval_s)
