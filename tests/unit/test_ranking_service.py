"""RankingService over a real grpc.aio server and a real stub, serving the session's trained version."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import lightgbm as lgb
import numpy as np
import pytest

from recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
from services.common import candidates
from services.common import ranking_features as rf
from services.common.artifacts import ArtifactError, ArtifactVersion
from services.ranking.service import Config, create
from tests.support import serving

if TYPE_CHECKING:
    from recsys.v1.ranking_pb2_grpc import RankingServiceAsyncStub as Stub


@dataclass(frozen=True)
class Served:
    item_ids: list[str]
    user_ids: list[str]
    items: np.ndarray
    users: np.ndarray
    item_features: np.ndarray
    user_features: np.ndarray
    history: dict[str, list[str]]


@pytest.fixture(scope="module")
def served(trained: ArtifactVersion) -> Served:
    return Served(
        json.loads(trained.file("item_ids.json").read_text()),
        json.loads(trained.file("user_ids.json").read_text()),
        np.load(trained.file("item_embeddings.npy")),
        np.load(trained.file("user_embeddings.npy")),
        np.load(trained.file("item_features.npy")),
        np.load(trained.file("user_features.npy")),
        json.loads(trained.file("user_history.json").read_text()),
    )


def request_for(s: Served, user_index: int, n: int, k: int) -> ranking_pb2.RankRequest:
    """What the gateway sends: retrieval's top-n unseen items and the features service's profile."""
    user = s.user_ids[user_index]
    seen = set(s.history[user])
    scores = s.items @ s.users[user_index]
    order = [i for i in np.argsort(-scores, kind="stable") if s.item_ids[i] not in seen][:n]
    return ranking_pb2.RankRequest(
        user=common_pb2.UserFeatures(
            user_id=user,
            known=True,
            embedding=s.users[user_index].tolist(),
            values=s.user_features[user_index].tolist(),
            recent_item_ids=s.history[user][:50],
            seen_item_ids=s.history[user],
        ),
        candidates=candidates.build([([s.item_ids[i] for i in order], scores[order], "ann")]),
        k=k,
    )


def run_with(version: ArtifactVersion | None, scenario: Callable[[Stub], Awaitable[None]]) -> None:
    async def main() -> None:
        component = create(Config())
        if version is not None:
            await component.load(version)
        async with serving(component, ranking_pb2_grpc.RankingServiceStub) as stub:
            await scenario(stub)

    asyncio.run(main())


async def invalid(stub: Stub, request: ranking_pb2.RankRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rank(request)
    return info.value


def test_config_defaults_to_port_50054() -> None:
    assert Config().port == 50054
    component = create(Config())
    assert (component.name, component.service_name, component.needs_artifacts) == (
        "ranking",
        "recsys.v1.RankingService",
        True,
    )


def test_top_k_sorted_distinct_and_unseen(trained: ArtifactVersion, served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        for user_index in (0, 5, 100):
            request = request_for(served, user_index, n=300, k=10)
            reply = await stub.Rank(request)
            ids = [i.item_id for i in reply.items]
            scores = [i.score for i in reply.items]
            assert len(ids) == len(set(ids)) == 10
            assert scores == sorted(scores, reverse=True)
            assert set(ids) <= set(request.candidates.item_ids)
            assert not set(ids) & set(request.user.seen_item_ids)
            assert {i.source for i in reply.items} == {"ann"}
            assert reply.artifact_version == trained.version

    run_with(trained, scenario)


def test_ranker_matches_offline_scores(trained: ArtifactVersion, served: Served) -> None:
    """The service scores exactly what the offline assembly + booster compute from the same inputs."""
    request = request_for(served, 3, n=50, k=50)
    rows = [served.item_ids.index(i) for i in request.candidates.item_ids]
    recent_rows = [served.item_ids.index(i) for i in request.user.recent_item_ids[: rf.RECENT_ITEMS]]
    matrix = rf.assemble(
        served.user_features[3],
        served.item_features[rows],
        np.array(request.candidates.scores, dtype=np.float32),
        candidate_embeddings=served.items[rows],
        recent=rf.recent_profile(served.items[recent_rows], served.items.shape[1]),
        recent_sequence=rf.ItemNeighbours.load(trained.file(rf.NEIGHBOURS_FILE), len(served.item_ids)).scores(
            recent_rows, rows
        ),
    )
    assert np.isfinite(matrix[:, rf.RANKER_FEATURES.index("recent_sequence")]).all()
    expected = lgb.Booster(model_file=str(trained.file("ranker.txt"))).predict(matrix)

    async def scenario(stub: Stub) -> None:
        reply = await stub.Rank(request)
        by_id = {i: float(e) for i, e in zip(request.candidates.item_ids, expected, strict=True)}
        for item in reply.items:
            assert item.score == pytest.approx(by_id[item.item_id], rel=1e-5, abs=1e-6)

    run_with(trained, scenario)


def test_unknown_items_duplicates_and_cold_users_are_scored(trained: ArtifactVersion, served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        request = request_for(served, 1, n=20, k=30)
        request.user.ClearField("values")
        request.user.ClearField("embedding")
        request.user.ClearField("recent_item_ids")
        request.user.ClearField("seen_item_ids")
        more = candidates.build([(["no-such-item", request.candidates.item_ids[0]], [-1.0, -2.0], "popular")])
        request.candidates.item_ids.extend(more.item_ids)
        request.candidates.scores.extend(more.scores)
        request.candidates.source_names.append("popular")
        request.candidates.sources.extend([1, 1])
        reply = await stub.Rank(request)
        ids = [i.item_id for i in reply.items]
        assert len(ids) == len(set(ids)) == 21
        assert "no-such-item" in ids
        assert {i.source for i in reply.items if i.item_id == "no-such-item"} == {"popular"}

    run_with(trained, scenario)


def test_bad_requests_name_the_field(trained: ArtifactVersion, served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        good = request_for(served, 2, n=30, k=10)
        cases: list[tuple[str, Callable[[ranking_pb2.RankRequest], object]]] = [
            ("k", lambda r: setattr(r, "k", 0)),
            ("k", lambda r: setattr(r, "k", 1001)),
            ("candidates.scores", lambda r: r.candidates.scores.pop()),
            ("candidates.sources", lambda r: r.candidates.sources.append(0)),
            ("candidates.sources", lambda r: r.candidates.source_names.pop()),
            ("candidates.item_ids[3]", lambda r: r.candidates.item_ids.__setitem__(3, " ")),
            ("user.values", lambda r: r.user.values.append(1.0)),
        ]
        for field, mutate in cases:
            request = ranking_pb2.RankRequest()
            request.CopyFrom(good)
            mutate(request)
            error = await invalid(stub, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert (error.details() or "").startswith(f"{field}:"), error.details()
        too_many = ranking_pb2.RankRequest(
            candidates=common_pb2.Candidates(item_ids=[str(i) for i in range(10_001)], scores=[0.0] * 10_001),
            k=10,
        )
        error = await invalid(stub, too_many)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("candidates.item_ids:")

    run_with(trained, scenario)


def test_unavailable_before_load(served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        error = await invalid(stub, request_for(served, 0, n=10, k=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    run_with(None, scenario)


def copy_version(trained: ArtifactVersion, tmp_path: Path) -> ArtifactVersion:
    path = tmp_path / trained.version
    shutil.copytree(trained.path, path)
    return ArtifactVersion(trained.version, path, trained.manifest)


def test_corrupt_or_mismatched_ranker_is_refused(trained: ArtifactVersion, tmp_path: Path) -> None:
    corrupt = copy_version(trained, tmp_path / "corrupt")
    corrupt.file("ranker.txt").write_text("this is not a LightGBM model\n")
    narrow = copy_version(trained, tmp_path / "narrow")
    x = np.random.default_rng(0).normal(size=(200, 3))
    lgb.train(
        {"objective": "regression", "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, label=x[:, 0]),
        num_boost_round=2,
    ).save_model(str(narrow.file("ranker.txt")))
    # Neighbours of another catalogue size: refused by name, like the ranker itself.
    misfit = copy_version(trained, tmp_path / "misfit")
    rf.ItemNeighbours(np.zeros(4, np.int64), np.empty(0, np.int32), np.empty(0, np.float32)).save(
        misfit.file(rf.NEIGHBOURS_FILE)
    )
    renamed = ArtifactVersion(
        trained.version,
        trained.path,
        {**trained.manifest, "features": {**trained.manifest["features"], "ranker": ["a", "b"]}},
    )

    async def main() -> None:
        component = create(Config())
        with pytest.raises(ArtifactError, match="not a LightGBM model"):
            await component.load(corrupt)
        with pytest.raises(ArtifactError, match="takes 3 features"):
            await component.load(narrow)
        with pytest.raises(ArtifactError, match=r"features\.ranker"):
            await component.load(renamed)
        with pytest.raises(ArtifactError, match=r"item_neighbours.npz has 3 item rows, expected \d+"):
            await component.load(misfit)
        assert component.version is None
        await component.load(trained)
        with pytest.raises(ArtifactError):
            await component.load(corrupt)
        assert component.version == trained.version  # a refused version leaves the old one serving

    asyncio.run(main())
