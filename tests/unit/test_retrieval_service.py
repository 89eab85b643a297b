"""RetrievalService over a real grpc.aio server and a real stub, serving a real artifact version."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common import candidates
from services.common import config as config_module
from services.common.artifacts import ArtifactError, ArtifactVersion, ArtifactWatcher, open_version
from services.common.server import Component, serve
from services.local import free_port
from services.retrieval.service import MAX_EXCLUDE, MAX_RECENT, Config, RetrievalService, create
from tests.support import serving
from tests.unit.retrieval_fixtures import SmallModel, small_model, write_version

if TYPE_CHECKING:  # the async stub class exists only for type checkers
    from recsys.v1.retrieval_pb2_grpc import RetrievalServiceAsyncStub as Stub

Request = retrieval_pb2.RetrieveRequest


@pytest.fixture(scope="module")
def model() -> SmallModel:
    return small_model()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, model: SmallModel) -> Path:
    """Artifacts with one good version `v1` (exact flat index) as CURRENT."""
    path = tmp_path_factory.mktemp("retrieval-service-artifacts")
    write_version(path, "v1", model)
    return path


def run_with(
    root: Path, scenario: Callable[[Stub, RetrievalService], Awaitable[None]], version: str = "v1"
) -> None:
    async def main() -> None:
        component = create(Config())
        await component.load(open_version(root, version))
        async with serving(component, retrieval_pb2_grpc.RetrievalServiceStub) as stub:
            await scenario(stub, component)

    asyncio.run(main())


def items(response: retrieval_pb2.RetrieveResponse) -> list[common_pb2.ScoredItem]:
    return candidates.head(response.candidates, len(response.candidates.item_ids))


def ids(response: retrieval_pb2.RetrieveResponse) -> list[str]:
    return list(response.candidates.item_ids)


def assert_well_formed(response: retrieval_pb2.RetrieveResponse, n: int, exclude: list[str]) -> None:
    got = ids(response)
    assert len(got) == n
    assert len(set(got)) == n, "candidates must be distinct"
    assert not set(got) & set(exclude), "an excluded item came back"
    scores = [c.score for c in items(response)]
    assert all(math.isfinite(s) for s in scores)
    assert all(a >= b for a, b in itertools.pairwise(scores)), "not best first"


def test_warm_user_gets_ann_candidates(root: Path, model: SmallModel) -> None:
    seen = model.history["1"]

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        embedding = model.user_embeddings[0].tolist()
        response = await stub.Retrieve(
            Request(user_id="1", user_embedding=embedding, exclude_item_ids=seen, n=500)
        )
        assert response.artifact_version == "v1"
        assert_well_formed(response, 500, seen)
        assert {c.source for c in items(response)} == {"ann"}
        expected = model.item_embeddings @ model.user_embeddings[0]
        first = model.item_ids.index(items(response)[0].item_id)
        assert items(response)[0].score == pytest.approx(float(expected[first]), rel=1e-4)

    run_with(root, scenario)


def test_recent_only_user_gets_folded_in_candidates(root: Path, model: SmallModel) -> None:
    seen = model.history["2"]

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        recent = [*seen[:10], "unknown-item"]
        response = await stub.Retrieve(
            Request(user_id="new", recent_item_ids=recent, exclude_item_ids=seen, n=300)
        )
        assert_well_formed(response, 300, seen)
        assert {c.source for c in items(response)} == {"recent"}

    run_with(root, scenario)


def test_cold_user_gets_popular_items(root: Path, model: SmallModel) -> None:
    async def scenario(stub: Stub, _: RetrievalService) -> None:
        response = await stub.Retrieve(Request(user_id="cold", n=50))
        assert_well_formed(response, 50, [])
        assert ids(response) == model.popular[:50]
        assert {c.source for c in items(response)} == {"popular"}
        assert [c.score for c in items(response)[:3]] == [-1.0, -2.0, -3.0]
        # unknown recent items only: still cold; exclusions skip the popular ones
        excluded = model.popular[:10]
        response = await stub.Retrieve(Request(recent_item_ids=["nope"], exclude_item_ids=excluded, n=20))
        assert_well_formed(response, 20, excluded)
        assert ids(response) == model.popular[10:30]

    run_with(root, scenario)


def test_heavy_exclusion_and_popular_top_up(tmp_path: Path, model: SmallModel) -> None:
    """An approximate index (IVF, nprobe=1) finds fewer than n under a heavy filter: popular items fill the
    rest, after the ANN ones and below their scores, and exclusions still hold."""
    write_version(tmp_path, "ivf", model, index_spec="IVF64,Flat", nprobe=1)
    # ~150 items per inverted list, one list probed, 70% of it excluded: ~45 ANN candidates for n=500
    exclude = [model.item_ids[i] for i in np.random.default_rng(0).permutation(len(model.item_ids))[:6800]]

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        embedding = model.user_embeddings[10].tolist()
        response = await stub.Retrieve(Request(user_embedding=embedding, exclude_item_ids=exclude, n=500))
        assert_well_formed(response, 500, exclude)
        sources = [c.source for c in items(response)]
        assert "ann" in sources and "popular" in sources
        first_popular = sources.index("popular")
        assert set(sources[first_popular:]) == {"popular"}
        # everything but 20 items excluded, n bigger than what is left: all of the rest, once each
        keep = set(model.item_ids[-20:])
        everything_else = [i for i in model.item_ids if i not in keep]
        response = await stub.Retrieve(
            Request(user_embedding=embedding, exclude_item_ids=everything_else, n=100)
        )
        assert set(ids(response)) == keep and len(response.candidates.item_ids) == 20

    run_with(tmp_path, scenario, version="ivf")


def test_the_largest_allowed_request(root: Path, model: SmallModel) -> None:
    rng_exclude = model.item_ids[::2][:MAX_EXCLUDE]

    async def scenario(stub: Stub, component: RetrievalService) -> None:
        n = component.config.max_candidates
        response = await stub.Retrieve(
            Request(
                user_embedding=model.user_embeddings[3].tolist(),
                recent_item_ids=model.item_ids[:MAX_RECENT],
                exclude_item_ids=rng_exclude,
                n=n,
            )
        )
        assert_well_formed(response, n, rng_exclude)

    run_with(root, scenario)


async def expect_invalid(stub: Stub, request: Request, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Retrieve(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:"), caught.value.details()


def test_bad_requests_are_invalid_argument(root: Path, model: SmallModel) -> None:
    dim = model.item_embeddings.shape[1]

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        for n in (0, -1, 2001):
            await expect_invalid(stub, Request(n=n), "n")
        await expect_invalid(stub, Request(user_embedding=[0.1] * (dim - 1), n=10), "user_embedding")
        await expect_invalid(stub, Request(user_embedding=[0.1] * (dim + 1), n=10), "user_embedding")
        await expect_invalid(
            stub, Request(user_embedding=[0.1] * (dim - 1) + [math.nan], n=10), "user_embedding"
        )
        await expect_invalid(
            stub, Request(user_embedding=[math.inf] + [0.1] * (dim - 1), n=10), "user_embedding"
        )
        too_many = [str(i) for i in range(MAX_EXCLUDE + 1)]
        await expect_invalid(stub, Request(exclude_item_ids=too_many, n=10), "exclude_item_ids")
        await expect_invalid(
            stub, Request(recent_item_ids=too_many[: MAX_RECENT + 1], n=10), "recent_item_ids"
        )
        await expect_invalid(stub, Request(user_id="u" * 257, n=10), "user_id")

    run_with(root, scenario)


def test_unavailable_before_load() -> None:
    async def main() -> None:
        async with serving(create(Config()), retrieval_pb2_grpc.RetrievalServiceStub) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Retrieve(Request(n=10))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())


def test_inconsistent_version_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, model: SmallModel
) -> None:
    async def main() -> None:
        component = create(Config())
        watcher = ArtifactWatcher(tmp_path, component.load)
        write_version(tmp_path, "good", model)
        assert await watcher.check() and watcher.loaded == "good"
        async with serving(component, retrieval_pb2_grpc.RetrievalServiceStub) as stub:
            # checksums all match, but the index holds fewer vectors than item_ids.json lists
            bad = write_version(tmp_path, "bad", model, index_rows=5000)
            with pytest.raises(ArtifactError, match="row counts disagree"):
                await component.load(open_version(tmp_path, "bad"))
            assert await watcher.check() and watcher.loaded == "good"  # refused through the watcher too
            response = await stub.Retrieve(Request(n=5))
            assert response.artifact_version == "good" and len(response.candidates.item_ids) == 5
            assert bad.version == "bad"
            # a good version after it is picked up and served
            write_version(tmp_path, "good2", model)
            assert await watcher.check() and watcher.loaded == "good2"
            response = await stub.Retrieve(Request(n=5))
            assert response.artifact_version == "good2"

    asyncio.run(main())


def test_serves_through_the_common_bootstrap(root: Path, model: SmallModel) -> None:
    """`serve()` with the component: health NOT_SERVING -> SERVING once CURRENT is loaded, then Retrieve."""

    async def main() -> None:
        config = config_module.parse(
            Config,
            ["--port", str(free_port()), "--artifacts-dir", str(root), "--reload-interval-s", "0.1"],
            env={},
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(create(config), config, stop))
        address = f"127.0.0.1:{config.port}"
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for _ in range(200):
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        reply = await health.Check(
                            health_pb2.HealthCheckRequest(service="recsys.v1.RetrievalService"), timeout=1
                        )
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("retrieval never reported SERVING")
                stub: Stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
                response = await stub.Retrieve(
                    Request(user_embedding=model.user_embeddings[0].tolist(), n=10)
                )
                assert len(response.candidates.item_ids) == 10 and response.artifact_version == "v1"
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(main())


def test_config_and_component() -> None:
    config = config_module.parse(Config, [], env={"RECSYS_MAX_CANDIDATES": "500"})
    assert config.port == 50053 and config.max_candidates == 500
    with pytest.raises(config_module.ConfigError, match="--max-candidates"):
        config_module.parse(Config, ["--max-candidates", "0"], env={})
    component: Component = create(config)
    assert component.name == "retrieval"
    assert component.service_name == "recsys.v1.RetrievalService"
    assert component.needs_artifacts
    described: Any = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"]
    assert described.full_name == component.service_name


def test_serves_the_trained_artifact(trained: ArtifactVersion) -> None:
    """The trainer's own output (services/trainer) loads and answers warm, recent-only and cold users."""
    user_ids = json.loads(trained.file("user_ids.json").read_text())
    embeddings = np.load(trained.file("user_embeddings.npy"))
    history: dict[str, list[str]] = json.loads(trained.file("user_history.json").read_text())

    async def main() -> None:
        component = create(Config())
        await component.load(trained)
        async with serving(component, retrieval_pb2_grpc.RetrievalServiceStub) as stub:
            for row in (0, len(user_ids) // 2, len(user_ids) - 1):
                seen = history.get(user_ids[row], [])
                warm = await stub.Retrieve(
                    Request(user_embedding=embeddings[row].tolist(), exclude_item_ids=seen, n=500)
                )
                assert_well_formed(warm, 500, seen)
                assert items(warm)[0].source == "ann" and warm.artifact_version == trained.version
                recent = await stub.Retrieve(Request(recent_item_ids=seen[:20], exclude_item_ids=seen, n=500))
                assert_well_formed(recent, 500, seen)
                assert items(recent)[0].source == ("recent" if seen else "popular")
            cold = await stub.Retrieve(Request(n=100))
            assert_well_formed(cold, 100, [])
            assert ids(cold)[:10] == json.loads(trained.file("popular.json").read_text())[:10]

    asyncio.run(main())
