"""FeatureService over a real grpc.aio server and a real stub, on both store backends."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from recsys.v1 import common_pb2, features_pb2, features_pb2_grpc
from services.common import config as config_mod
from services.common.server import StartupError, serve
from services.common.sources.base import HISTORY_LIMIT
from services.features import Config, FeaturesComponent, create
from services.features.redis_store import RedisStore
from services.features.store import EventType
from services.healthcheck import health_status
from services.local import free_port
from tests.support import redis_server, serving
from tests.unit.features_fixtures import Tables, build_version

if TYPE_CHECKING:
    from recsys.v1.features_pb2_grpc import FeatureServiceAsyncStub as Stub


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    return build_version(tmp_path_factory.mktemp("feature-artifacts"), "v1", seed=1)


@pytest.fixture(params=["embedded", "redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    base = Config(
        event_log=tmp_path / "events.jsonl",
        artifacts_dir=tmp_path / "artifacts",
        spool=tmp_path / "spool.jsonl",
    )
    if request.param == "embedded":
        return base
    url: str = request.getfixturevalue("redis_url")
    return replace(base, redis_url=url, redis_prefix=f"svc-{uuid.uuid4().hex[:12]}")


def run(config: Config, scenario: Callable[[FeaturesComponent, Stub], Awaitable[None]]) -> None:
    async def main() -> None:
        component = create(config)
        async with serving(component, features_pb2_grpc.FeatureServiceStub) as stub:
            await scenario(component, stub)

    asyncio.run(main())


def event(
    user: str = "u0", item: str = "i1", kind: int = common_pb2.EVENT_TYPE_CLICK, **kw: object
) -> common_pb2.Event:
    return common_pb2.Event(user_id=user, item_id=item, type=kind, **kw)  # type: ignore[arg-type]


def test_component_shape(config: Config) -> None:
    component = create(config)
    assert component.name == "features"
    assert component.service_name == "recsys.v1.FeatureService"
    assert component.needs_artifacts is True
    assert component.service_name == features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name
    asyncio.run(component.close())


def test_before_load_every_rpc_is_unavailable(config: Config) -> None:
    async def scenario(component: FeaturesComponent, stub: Stub) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id="u0"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["i1"]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.WriteEvents(features_pb2.WriteEventsRequest(events=[event()]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await component.store.read_events() == []

    run(config, scenario)


def test_reads_and_writes_over_grpc(config: Config, v1: Tables) -> None:
    async def scenario(component: FeaturesComponent, stub: Stub) -> None:
        await component.load(v1.version)
        ids = [v1.item_ids[4], "missing", v1.item_ids[0]]
        reply = await stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=ids))
        assert reply.artifact_version == "v1" and reply.dim == v1.item_features.shape[1]
        assert list(reply.found) == [True, False, True]
        matrix = np.frombuffer(reply.values, dtype="<f4").reshape(len(ids), reply.dim)
        assert matrix[[0, 2]].tobytes() == v1.item_features[[4, 0]].tobytes()
        assert np.isnan(matrix[1]).all()

        empty = await stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest())
        assert empty.values == b"" and list(empty.found) == [] and empty.dim == reply.dim

        user = await stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id="u3"))
        assert user.artifact_version == "v1" and user.user.known and user.user.user_id == "u3"
        np.testing.assert_array_equal(np.array(user.user.values, dtype=np.float32), v1.user_features[3])
        assert list(user.user.recent_item_ids) == v1.user_history["u3"][: config.recent_max]
        assert set(user.user.seen_item_ids) == set(v1.user_history["u3"])

        before = int(time.time() * 1000)
        written = await stub.WriteEvents(
            features_pb2.WriteEventsRequest(
                events=[
                    event("u3", "fresh", common_pb2.EVENT_TYPE_IMPRESSION, context={"page": "home"}),
                    event("u3", "fresh"),
                    event("u3", "rated", common_pb2.EVENT_TYPE_RATING, rating=4.0, timestamp_ms=123),
                ]
            )
        )
        assert written.written == 3
        user = await stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id="u3"))
        assert list(user.user.recent_item_ids[:2]) == ["rated", "fresh"]
        assert {"rated", "fresh"} <= set(user.user.seen_item_ids)

        logged = await component.store.read_events()
        assert [(e.type, e.item_id) for e in logged] == [
            (EventType.IMPRESSION, "fresh"),
            (EventType.CLICK, "fresh"),
            (EventType.RATING, "rated"),
        ]
        assert logged[0].context == {"page": "home"} and logged[0].rating is None
        assert before <= logged[0].timestamp_ms <= int(time.time() * 1000) + 1  # 0 means "now"
        assert logged[2].timestamp_ms == 123 and logged[2].rating == 4.0

        stranger = await stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id="stranger"))
        assert not stranger.user.known and list(stranger.user.values) == []

    run(config, scenario)


BAD_REQUESTS: list[tuple[str, str, object]] = [
    ("GetUserFeatures", "user_id", features_pb2.GetUserFeaturesRequest(user_id="")),
    ("GetUserFeatures", "user_id", features_pb2.GetUserFeaturesRequest(user_id="   ")),
    ("GetUserFeatures", "user_id", features_pb2.GetUserFeaturesRequest(user_id="x" * 300)),
    ("GetItemFeatures", "item_ids", features_pb2.GetItemFeaturesRequest(item_ids=["i1"] * 10_001)),
    ("WriteEvents", "events", features_pb2.WriteEventsRequest()),
    ("WriteEvents", "events", features_pb2.WriteEventsRequest(events=[event()] * 1001)),
    ("WriteEvents", "events[1].user_id", features_pb2.WriteEventsRequest(events=[event(), event(user="")])),
    (
        "WriteEvents",
        "events[2].item_id",
        features_pb2.WriteEventsRequest(events=[event(), event(), event(item="")]),
    ),
    (
        "WriteEvents",
        "events[1].type",
        features_pb2.WriteEventsRequest(events=[event(), event(kind=common_pb2.EVENT_TYPE_UNSPECIFIED)]),
    ),
    ("WriteEvents", "events[0].type", features_pb2.WriteEventsRequest(events=[event(kind=99)])),
    (
        "WriteEvents",
        "events[1].rating",
        features_pb2.WriteEventsRequest(
            events=[event(), event(kind=common_pb2.EVENT_TYPE_RATING, rating=math.nan)]
        ),
    ),
    (
        "WriteEvents",
        "events[0].rating",
        features_pb2.WriteEventsRequest(events=[event(kind=common_pb2.EVENT_TYPE_RATING, rating=math.inf)]),
    ),
    (
        "WriteEvents",
        "events[0].timestamp_ms",
        features_pb2.WriteEventsRequest(events=[event(timestamp_ms=-5)]),
    ),
]


def test_bad_inputs_are_invalid_argument_naming_the_field_and_write_nothing(
    config: Config, v1: Tables
) -> None:
    async def scenario(component: FeaturesComponent, stub: Stub) -> None:
        await component.load(v1.version)
        before = await stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id="u0"))
        for method, field, request in BAD_REQUESTS:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await getattr(stub, method)(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, field)
            details = info.value.details() or ""
            assert details.startswith(f"{field}: "), (field, details)
        assert await component.store.read_events() == []
        after = await stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id="u0"))
        assert after == before
        # A rating of 0 is a valid rating (finite); a click's rating is ignored.
        ok = features_pb2.WriteEventsRequest(
            events=[event(kind=common_pb2.EVENT_TYPE_RATING, rating=0.0), event(rating=math.nan)]
        )
        assert (await stub.WriteEvents(ok)).written == 2
        logged = await component.store.read_events()
        assert [e.rating for e in logged] == [0.0, None]

    run(config, scenario)


def test_unreachable_redis_is_a_startup_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    config = config_mod.parse(Config, ["--redis-url", url, "--event-log", str(tmp_path / "e.jsonl")])
    assert config.redis_url == url
    with pytest.raises(StartupError) as info:
        create(config)
    assert str(info.value) == f"cannot reach Redis at {url}: Connection refused"


def test_startup_error_hides_the_redis_password() -> None:
    url = f"redis://default:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(StartupError) as info:
        create(Config(redis_url=url))
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("cannot reach Redis at redis://default:***@127.0.0.1:")


def test_config_defaults_and_environment(tmp_path: Path) -> None:
    config = config_mod.parse(Config, [], env={})
    assert config.port == 50052 and config.redis_url is None and config.recent_max == HISTORY_LIMIT == 500
    assert config.event_log == Path("var/events.jsonl")
    config = config_mod.parse(
        Config,
        [],
        env={"RECSYS_REDIS_URL": "redis://r:6379/1", "RECSYS_RECENT_MAX": "7", "RECSYS_PORT": "6000"},
    )
    assert (config.redis_url, config.recent_max, config.port) == ("redis://r:6379/1", 7, 6000)
    with pytest.raises(config_mod.ConfigError, match="RECSYS_RECENT_MAX"):
        config_mod.parse(Config, [], env={"RECSYS_RECENT_MAX": "0"})
    assert config_mod.parse(Config, ["--events-max-len", "5000"], env={}).events_max_len == 5000
    with pytest.raises(config_mod.ConfigError, match="--events-max-len"):
        config_mod.parse(Config, ["--events-max-len", "-1"], env={})


def test_the_event_cap_reaches_the_redis_store(redis_url: str, tmp_path: Path) -> None:
    component = create(Config(redis_url=redis_url, events_max_len=5000, spool=tmp_path / "spool.jsonl"))
    assert isinstance(component.store, RedisStore) and component.store.config.events_max_len == 5000
    asyncio.run(component.close())


def test_served_by_the_common_bootstrap(config: Config, v1: Tables) -> None:
    """`serve` loads CURRENT through the component and reports SERVING; a call then answers."""
    config = replace(config, artifacts_dir=v1.version.path.parent, port=free_port(), reload_interval_s=0.05)
    address = f"{config.host}:{config.port}"

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(create(config), config, stop))
        try:
            for _ in range(200):
                status = await asyncio.to_thread(health_status, address, "recsys.v1.FeatureService")
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("features never reported SERVING")
            async with grpc.aio.insecure_channel(address) as channel:
                stub = features_pb2_grpc.FeatureServiceStub(channel)
                reply = await stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["i1"]))
                assert reply.artifact_version == "v1" and list(reply.found) == [True]
        finally:
            stop.set()
            await task

    asyncio.run(main())


def test_redis_going_away_reads_are_unavailable_writes_are_spooled_then_delivered_once(
    tmp_path: Path, v1: Tables
) -> None:
    """A Redis that dies after start-up: reads fail with UNAVAILABLE (retryable), not UNKNOWN; writes
    are accepted into the spool and reach the log, in order and once each, when Redis is back."""
    port = free_port()
    config = Config(redis_prefix="gone", spool=tmp_path / "spool.jsonl", reload_interval_s=0.2)

    async def main(stack: ExitStack) -> None:
        url = stack.enter_context(redis_server(tmp_path / "redis", port))
        component = create(replace(config, redis_url=url))
        async with serving(component, features_pb2_grpc.FeatureServiceStub) as stub:
            await component.load(v1.version)
            first = event(item="before", event_id="e-0")
            await stub.WriteEvents(features_pb2.WriteEventsRequest(events=[first]))
            stack.close()  # Redis is gone
            reads: list[Callable[[], Awaitable[object]]] = [
                lambda: stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id="u0")),
                lambda: stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["i1"])),
            ]
            for call in reads:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call()
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "online store unavailable" in (info.value.details() or "")
            spooled = [event(item=f"while-down-{i}", event_id=f"e-{i}") for i in range(1, 4)]
            for e in spooled:
                reply = await stub.WriteEvents(features_pb2.WriteEventsRequest(events=[e]))
                assert reply.written == 1
            # A client retry of an event already spooled: accepted again, written once.
            await stub.WriteEvents(features_pb2.WriteEventsRequest(events=[spooled[0]]))
            assert component.writer.spool is not None and component.writer.spool.pending

            with redis_server(tmp_path / "redis-again", port):  # back, empty (no persistence)
                deadline = time.monotonic() + 20
                while component.writer.spool.pending and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert not component.writer.spool.pending
                log = await component.store.read_events()
                assert [e.event_id for e in log] == ["e-1", "e-2", "e-3"]
                assert [e.item_id for e in log] == ["while-down-1", "while-down-2", "while-down-3"]
                # Written after the spool drained: straight to Redis, behind what was spooled.
                await stub.WriteEvents(
                    features_pb2.WriteEventsRequest(events=[event(item="after", event_id="e-9")])
                )
                assert [e.event_id for e in await component.store.read_events()][-1] == "e-9"

    with ExitStack() as stack:
        asyncio.run(main(stack))


def test_a_full_spool_is_resource_exhausted_and_keeps_what_it_holds(tmp_path: Path, v1: Tables) -> None:
    port = free_port()
    config = Config(redis_prefix="full", spool=tmp_path / "spool.jsonl", spool_max_mb=0.001)

    async def main(stack: ExitStack) -> None:
        url = stack.enter_context(redis_server(tmp_path / "redis", port))
        component = create(replace(config, redis_url=url))
        async with serving(component, features_pb2_grpc.FeatureServiceStub) as stub:
            await component.load(v1.version)
            stack.close()
            accepted = 0
            with pytest.raises(grpc.aio.AioRpcError) as info:
                for i in range(100):
                    await stub.WriteEvents(features_pb2.WriteEventsRequest(events=[event(item=f"i{i}")]))
                    accepted += 1
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "spool.jsonl is full" in (info.value.details() or "")
            assert 0 < accepted < 100
            with redis_server(tmp_path / "redis-again", port):
                deadline = time.monotonic() + 20
                while len(await component.store.read_events()) < accepted and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert [e.item_id for e in await component.store.read_events()] == [
                    f"i{i}" for i in range(accepted)
                ]

    with ExitStack() as stack:
        asyncio.run(main(stack))
