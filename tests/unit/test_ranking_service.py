"""RankingService over a real grpc.aio server and a real stub, serving the session's trained version.

Requests carry what the gateway sends: the features service's profile of a user and the fused
candidates the retrieval model generates for that user (services.common.fusion). The reference for
every score is the trainer's own code: `assemble` and an Ensemble of LightGBM boosters read from the
version's ranker files.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pytest

from recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
from services.cli import main as cli_main
from services.common import candidates, fusion
from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.diversity import POOL_FACTOR, mmr
from services.common.fusion import CandidateColumns, SourceColumn
from services.common.ranker import Ensemble, model_file
from services.common.ranker_features import (
    ITEM_FEATURES,
    SOURCE_FEATURES,
    USER_FEATURES,
    assemble,
    ranker_features,
)
from services.monitor_cli import stats_to_json
from services.ranking.service import Config, create
from services.retrieval.model import RetrievalModel
from services.trainer.ranker import Booster
from tests.support import free_port, serving

if TYPE_CHECKING:
    from recsys.v1.ranking_pb2_grpc import RankingServiceAsyncStub as Stub

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Served:
    """The trained version as the other stages and the trainer see it."""

    version: ArtifactVersion
    retrieval: RetrievalModel
    sources: list[str]
    user_ids: list[str]
    item_features: F32
    user_features: F32
    history: dict[str, list[str]]
    diversity: F32
    #: the trainer's scorer: LightGBM boosters read from the version's ranker files
    ranker: Ensemble


@pytest.fixture(scope="module")
def served(trained: ArtifactVersion) -> Served:
    retrieval = RetrievalModel.load(trained)
    models = int(trained.manifest["ranker"]["models"])
    user_ids = json.loads(trained.file("user_ids.json").read_text())
    items = np.load(trained.file("item_features.npy"))
    return Served(
        trained,
        retrieval,
        list(trained.manifest["pipeline"]["sources"]),
        user_ids,
        items,
        np.load(trained.file("user_features.npy")),
        json.loads(trained.file("user_history.json").read_text()),
        np.load(trained.file(trained.manifest["diversity"]["file"])),
        Ensemble([Booster(lgb.Booster(model_file=str(trained.file(model_file(i))))) for i in range(models)]),
    )


@dataclass(frozen=True)
class Case:
    """One request and what its candidates are on the trainer's side."""

    request: ranking_pb2.RankRequest
    columns: CandidateColumns  # rows: -1 for an item the version does not know
    user_values: F32  # empty for a cold user

    def offline(self, s: Served) -> tuple[F32, F64]:
        """The ranker's input and scores for every candidate, computed by the trainer's code."""
        rows = self.columns.rows
        items = s.item_features[np.maximum(rows, 0)].astype(np.float64)
        items[rows < 0] = np.nan
        matrix = assemble(s.sources, self.user_values, items, self.columns)
        return matrix, s.ranker.score(matrix)


def case_for(s: Served, user_index: int, n: int = 100, k: int = 10, seen_candidates: int = 0) -> Case:
    """What the gateway sends for a user: the profile, and the n fused candidates retrieval generates.
    `seen_candidates`: the user has also seen the first few candidates since (live feedback)."""
    user = s.user_ids[user_index]
    profile = common_pb2.UserFeatures(
        user_id=user,
        known=True,
        values=s.user_features[user_index].tolist(),
        recent_item_ids=s.history[user][:50],
        seen_item_ids=s.history[user],
    )
    columns = fusion.generate(s.retrieval.sources, s.retrieval.history(profile), n, s.retrieval.fusion)
    message = candidates.to_proto(columns, s.retrieval.item_ids)
    profile.seen_item_ids.extend(message.item_ids[:seen_candidates])
    request = ranking_pb2.RankRequest(user=profile, candidates=message, k=k)
    return Case(request, columns, s.user_features[user_index])


def append_candidates(case: Case, item_ids: list[str], rows: list[int], like: list[int], source: str) -> Case:
    """`case` with more candidates at the end, proposed by `source`, each seen by every source as the
    candidate at position `like[i]` is (for a duplicate: its first occurrence)."""
    request = ranking_pb2.RankRequest()
    request.CopyFrom(case.request)
    cands = request.candidates
    if source not in cands.source_names:
        cands.source_names.append(source)
    cands.item_ids.extend(item_ids)
    cands.scores.extend(float(cands.scores[-1]) - 1.0 - i for i in range(len(item_ids)))
    cands.sources.extend([list(cands.source_names).index(source)] * len(item_ids))
    for column in cands.columns:
        column.scores.extend(column.scores[p] for p in like)
        column.ranks.extend(column.ranks[p] for p in like)
    old = case.columns
    columns = CandidateColumns(
        np.concatenate([old.rows, np.asarray(rows, dtype=np.int64)]),
        np.asarray(cands.scores, dtype=np.float32),
        [*old.origin, *([source] * len(item_ids))],
        {
            name: SourceColumn(
                np.concatenate([c.scores, c.scores[like]]), np.concatenate([c.ranks, c.ranks[like]]), c.best
            )
            for name, c in old.columns.items()
        },
    )
    return Case(request, columns, case.user_values)


def run_with(
    version: ArtifactVersion | None,
    scenario: Callable[[Stub], Awaitable[None]],
    config: Config | None = None,
) -> None:
    async def main() -> None:
        # LightGBM scores unless a test compiles the trees (test_compiled_trees_score_the_same)
        component = create(config or Config(compiled_trees=False))
        if version is not None:
            await component.load(version)
        async with serving(component, ranking_pb2_grpc.RankingServiceStub) as stub:
            await scenario(stub)

    asyncio.run(main())


async def invalid(stub: Stub, request: ranking_pb2.RankRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rank(request)
    return info.value


def positions_of(case: Case, reply: ranking_pb2.RankResponse) -> list[int]:
    """Each returned item's (first) position among the candidates."""
    ids = list(case.request.candidates.item_ids)
    return [ids.index(item.item_id) for item in reply.items]


def assert_scores_match(case: Case, reply: ranking_pb2.RankResponse, expected: F64) -> None:
    """The service's scores are the trainer's within 1e-6 (beyond the float32 the message carries)."""
    for item, p in zip(reply.items, positions_of(case, reply), strict=True):
        assert abs(item.score - expected[p]) <= 1e-6 + abs(expected[p]) * 2**-24, (item.item_id, expected[p])


def test_config_defaults_to_port_50054() -> None:
    assert Config().port == 50054
    assert Config().compiled_trees
    component = create(Config())
    assert (component.name, component.service_name, component.needs_artifacts) == (
        "ranking",
        "recsys.v1.RankingService",
        True,
    )


def test_top_k_sorted_distinct_and_unseen(trained: ArtifactVersion, served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        for user_index in (0, 5, 100):
            case = case_for(served, user_index, n=100, k=10, seen_candidates=3)
            request = case.request
            reply = await stub.Rank(request)
            ids = [i.item_id for i in reply.items]
            scores = [i.score for i in reply.items]
            assert len(ids) == len(set(ids)) == 10
            assert scores == sorted(scores, reverse=True)
            assert set(ids) <= set(request.candidates.item_ids)
            assert not set(ids) & set(request.user.seen_item_ids)
            assert not set(ids) & set(request.candidates.item_ids[:3])  # seen since retrieval ran
            # each item keeps the source that proposed it
            origin = dict(zip(request.candidates.item_ids, case.columns.origin, strict=True))
            assert [i.source for i in reply.items] == [origin[i] for i in ids]
            assert reply.artifact_version == trained.version
            assert not reply.features and not reply.feature_names  # only with `debug`

    run_with(trained, scenario)


def test_the_service_scores_what_the_trainers_code_computes(served: Served) -> None:
    """The same request through the service and through assemble + the trainer's boosters."""

    async def scenario(stub: Stub) -> None:
        for user_index in (3, 42):
            case = case_for(served, user_index, n=100, k=100, seen_candidates=2)
            _, expected = case.offline(served)
            reply = await stub.Rank(case.request)
            assert len(reply.items) == 98
            assert_scores_match(case, reply, expected)
            # the order is the trainer's order of the unseen candidates
            unseen = np.arange(2, 100)
            assert positions_of(case, reply) == unseen[np.argsort(-expected[unseen], kind="stable")].tolist()

    run_with(served.version, scenario)


def test_compiled_trees_score_the_same(served: Served, tmp_path: Path) -> None:
    case = case_for(served, 7, n=100, k=20)
    _, expected = case.offline(served)

    async def main() -> None:
        component = create(Config(compiled_trees=True, compile_cache=tmp_path))
        await component.load(served.version)
        await asyncio.gather(*component._compiling)  # the background compilation, to its end
        model = component.versions.current
        assert model is not None and [s.kind for s in model.scorers] == ["lleaves"] * len(model.scorers)
        async with serving(component, ranking_pb2_grpc.RankingServiceStub) as stub:
            assert_scores_match(case, await stub.Rank(case.request), expected)

    asyncio.run(main())
    assert len(list(tmp_path.glob("*.so"))) == int(served.version.manifest["ranker"]["models"])


def test_debug_returns_the_feature_rows_of_the_returned_items(served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        case = case_for(served, 11, n=100, k=15)
        case.request.debug = True
        matrix, _ = case.offline(served)
        reply = await stub.Rank(case.request)
        names = list(served.version.manifest["features"]["ranker"])
        assert list(reply.feature_names) == names == ranker_features(served.sources)
        rows = np.frombuffer(reply.features, dtype="<f4").reshape(len(reply.items), len(names))
        assert len(reply.items) == 15
        np.testing.assert_array_equal(rows, matrix[positions_of(case, reply)])

    run_with(served.version, scenario)


def test_explanations_sum_to_the_trainers_score_over_the_wire(served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        case = case_for(served, 13, n=100, k=10)
        case.request.explain = True
        matrix, expected = case.offline(served)
        reply = await stub.Rank(case.request)
        assert [e.item_id for e in reply.explanations] == [i.item_id for i in reply.items]
        names = ranker_features(served.sources)
        for position, why in zip(positions_of(case, reply), reply.explanations, strict=True):
            assert not why.unavailable
            assert why.ranker_score == pytest.approx(expected[position], abs=1e-4)
            total = why.base + sum(c.contribution for c in why.contributions)
            assert total == pytest.approx(why.ranker_score, abs=1e-4)
            assert sorted(c.feature for c in why.contributions) == sorted(names)
            sizes = [abs(c.contribution) for c in why.contributions]
            assert sizes == sorted(sizes, reverse=True)
            values = {c.feature: c.value for c in why.contributions}
            np.testing.assert_array_equal(
                np.asarray([values[n] for n in names], np.float32), matrix[position]
            )
            listed = {s for s, c in case.columns.columns.items() if np.isfinite(c.ranks[position])}
            assert set(why.sources) == listed and listed
        case.request.explain = False
        assert not (await stub.Rank(case.request)).explanations

    run_with(served.version, scenario)


def test_unknown_items_duplicates_and_new_users_are_scored(served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        case = case_for(served, 1, n=20, k=30)
        new_user = ranking_pb2.RankRequest()
        new_user.CopyFrom(case.request)
        new_user.user.ClearField("values")
        new_user.user.known = False
        # no profile, one live click (an item outside the candidates): the ranker scores them
        del new_user.user.recent_item_ids[1:]
        del new_user.user.seen_item_ids[1:]
        case = Case(new_user, case.columns, np.empty(0, np.float32))
        first = case.request.candidates.item_ids[0]
        case = append_candidates(
            case, ["no-such-item", first], [-1, int(case.columns.rows[0])], [19, 0], "popular"
        )
        case.request.debug = True
        matrix, expected = case.offline(served)
        reply = await stub.Rank(case.request)
        ids = [i.item_id for i in reply.items]
        assert len(ids) == len(set(ids)) == 21  # the duplicate counts once
        assert "no-such-item" in ids
        assert {i.source for i in reply.items if i.item_id == "no-such-item"} == {"popular"}
        # a duplicate is the candidate at its first position (source, score, features)
        assert [i.source for i in reply.items if i.item_id == first] == [case.columns.origin[0]]
        assert_scores_match(case, reply, expected)
        rows = np.frombuffer(reply.features, dtype="<f4").reshape(len(ids), -1)
        np.testing.assert_array_equal(rows, matrix[positions_of(case, reply)])
        names = ranker_features(served.sources)
        user = slice(names.index(USER_FEATURES[0]), names.index(USER_FEATURES[-1]) + 1)
        item = slice(names.index(ITEM_FEATURES[0]), names.index(ITEM_FEATURES[-1]) + 1)
        assert np.isnan(rows[:, user]).all()  # a new user: no profile
        assert np.isnan(rows[ids.index("no-such-item"), item]).all()
        assert np.isfinite([i.score for i in reply.items]).all()

    run_with(served.version, scenario)


def test_a_user_with_no_history_keeps_the_retrieval_order(served: Served) -> None:
    """The ranker learns on users with a history; one with none (a newcomer's popular candidates) is
    served in retrieval's fused order, with the fused scores, and explain says why."""

    async def scenario(stub: Stub) -> None:
        request = case_for(served, 2, n=40, k=10).request
        request.user.CopyFrom(common_pb2.UserFeatures(user_id="newcomer"))
        request.explain = True
        reply = await stub.Rank(request)
        assert [i.item_id for i in reply.items] == list(request.candidates.item_ids[:10])
        np.testing.assert_allclose([i.score for i in reply.items], request.candidates.scores[:10], rtol=1e-6)
        assert len(reply.explanations) == 10
        assert {e.unavailable for e in reply.explanations} == {
            "a user with no history is served in retrieval order, not by the ranker"
        }

    run_with(served.version, scenario)


def mean_similarity(vectors: F32) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    n = len(vectors)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def test_mmr_returns_k_diverse_items_with_non_increasing_scores(served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        plain_similarity, mmr_similarity = 0.0, 0.0
        for user_index in (0, 5, 100, 200):
            case = case_for(served, user_index, n=100, k=10, seen_candidates=1)
            _, expected = case.offline(served)
            plain = await stub.Rank(case.request)
            case.request.mmr_lambda = 0.5
            diverse = await stub.Rank(case.request)
            ids = [i.item_id for i in diverse.items]
            scores = [i.score for i in diverse.items]
            assert len(ids) == len(set(ids)) == 10
            assert scores == sorted(scores, reverse=True)
            assert case.request.candidates.item_ids[0] not in ids  # seen items stay out
            assert ids[0] == plain.items[0].item_id  # the most relevant item comes first either way
            # MMR over the ranker's k * POOL_FACTOR best, by the version's diversity vectors
            unseen = np.arange(1, 100)
            pool = unseen[np.argsort(-expected[unseen], kind="stable")][: 10 * POOL_FACTOR]
            rows = case.columns.rows[pool]
            picked, marginal = mmr(expected[pool], served.diversity[rows], 10, 0.5)
            assert positions_of(case, diverse) == pool[picked].tolist()
            np.testing.assert_allclose(scores, marginal, rtol=1e-6, atol=1e-6)
            by_id = dict(zip(case.request.candidates.item_ids, case.columns.rows.tolist(), strict=True))
            plain_similarity += mean_similarity(served.diversity[[by_id[i.item_id] for i in plain.items]])
            mmr_similarity += mean_similarity(served.diversity[[by_id[i] for i in ids]])
        assert mmr_similarity < plain_similarity
        # every candidate seen: nothing to return, with or without MMR
        case.request.user.seen_item_ids.extend(case.request.candidates.item_ids)
        assert not (await stub.Rank(case.request)).items

    run_with(served.version, scenario)


def test_empty_candidates_and_unknown_versions(served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        reply = await stub.Rank(ranking_pb2.RankRequest(k=10))
        assert not reply.items and reply.artifact_version == served.version.version
        request = case_for(served, 0, n=10, k=5).request
        request.artifact_version = "20000101T000000000000Z"
        error = await invalid(stub, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "20000101T000000000000Z" in (error.details() or "")
        request.artifact_version = served.version.version  # CURRENT by its name
        assert len((await stub.Rank(request)).items) == 5

    run_with(served.version, scenario)


def test_bad_requests_name_the_field(served: Served) -> None:
    def set_column_source(i: int, name: str) -> Callable[[ranking_pb2.RankRequest], object]:
        return lambda r: setattr(r.candidates.columns[i], "source", name)

    async def scenario(stub: Stub) -> None:
        good = case_for(served, 2, n=30, k=10).request
        first = good.candidates.columns[0].source
        cases: list[tuple[str, Callable[[ranking_pb2.RankRequest], object]]] = [
            ("k", lambda r: setattr(r, "k", 0)),
            ("k", lambda r: setattr(r, "k", -3)),
            ("k", lambda r: setattr(r, "k", 1001)),
            ("mmr_lambda", lambda r: setattr(r, "mmr_lambda", 1.0)),
            ("mmr_lambda", lambda r: setattr(r, "mmr_lambda", -0.25)),
            ("mmr_lambda", lambda r: setattr(r, "mmr_lambda", math.nan)),
            ("user.values", lambda r: r.user.values.append(1.0)),
            ("user.values", lambda r: r.user.values.pop()),
            ("candidates.scores", lambda r: r.candidates.scores.pop()),
            ("candidates.sources", lambda r: r.candidates.sources.append(0)),
            ("candidates.sources", lambda r: r.candidates.source_names.pop()),
            ("candidates.item_ids[3]", lambda r: r.candidates.item_ids.__setitem__(3, " ")),
            ("candidates.columns[0].scores", lambda r: r.candidates.columns[0].scores.pop()),
            ("candidates.columns[1].ranks", lambda r: r.candidates.columns[1].ranks.append(0.0)),
            ("candidates.columns[0].source", set_column_source(0, "")),
            ("candidates.columns[2].source", set_column_source(2, first)),  # a column twice
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
        assert len((await stub.Rank(good)).items) == 10  # the good request itself is served

    run_with(served.version, scenario)


def test_unavailable_before_load(served: Served) -> None:
    async def scenario(stub: Stub) -> None:
        error = await invalid(stub, case_for(served, 0, n=10, k=5).request)
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    run_with(None, scenario)


# --- versions the service refuses ---------------------------------------------------------------------


def linked_copy(
    trained: ArtifactVersion, directory: Path, manifest: dict[str, Any] | None = None
) -> ArtifactVersion:
    """The trained version in `directory`, every file a symlink to the original (replace_file first)."""
    path = directory / trained.version
    path.mkdir(parents=True)
    for name in trained.manifest["files"]:
        os.symlink(trained.path / name, path / name)
    return ArtifactVersion(trained.version, path, manifest or dict(trained.manifest))


def replace_file(version: ArtifactVersion, name: str) -> Path:
    """A fresh file in place of the symlink (never writing through it into the session's version)."""
    path = version.path / name
    path.unlink()
    return path


def with_manifest(trained: ArtifactVersion, **changes: Any) -> ArtifactVersion:
    return replace(trained, manifest={**trained.manifest, **changes})


def refused_versions(trained: ArtifactVersion, tmp_path: Path) -> list[tuple[str, ArtifactVersion]]:
    """(the words the ArtifactError must contain, a version that must be refused)."""
    manifest = trained.manifest
    features, n_names = manifest["features"], len(manifest["features"]["ranker"])
    corrupt = linked_copy(trained, tmp_path / "corrupt")
    replace_file(corrupt, model_file(1)).write_text("this is not a LightGBM model\n")
    narrow = linked_copy(trained, tmp_path / "narrow")
    x = np.random.default_rng(0).normal(size=(200, 3))
    lgb.train(
        {"objective": "regression", "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, label=x[:, 0]),
        num_boost_round=2,
    ).save_model(str(replace_file(narrow, model_file(0))))
    files = {**manifest["files"], "short.npy": {}}
    short = linked_copy(
        trained, tmp_path / "short", {**manifest, "files": files, "diversity": {"file": "short.npy"}}
    )
    np.save(short.path / "short.npy", np.ones((3, 4), np.float32))
    items = linked_copy(trained, tmp_path / "items")
    np.save(replace_file(items, "item_features.npy"), np.zeros((3, len(ITEM_FEATURES)), np.float32))
    sources = list(manifest["pipeline"]["sources"])
    n_items = len(json.loads(trained.file("item_ids.json").read_text()))
    bad_reference = {**features, "reference": {"ranker": {"fused_log_rank": {"edges": [1.0], "counts": [1]}}}}
    return [
        (r"features\.reference\.ranker is malformed", with_manifest(trained, features=bad_reference)),
        ("ranker_1.txt is not a LightGBM model", corrupt),
        (f"ranker_0.txt takes 3 features, the manifest lists {n_names}", narrow),
        (r"features\.ranker", with_manifest(trained, features={**features, "ranker": ["a", "b"]})),
        (r"features\.user", with_manifest(trained, features={**features, "user": features["user"][:-1]})),
        (r"features\.item", with_manifest(trained, features={**features, "item": features["item"][::-1]})),
        # features assembled for other sources than the pipeline's
        (
            r"features\.ranker",
            with_manifest(trained, pipeline={**manifest["pipeline"], "sources": sources[:-1]}),
        ),
        ("no diversity vectors", with_manifest(trained, diversity={})),
        (f"no diversity vectors of {n_items} items", short),
        (r"item_features\.npy has shape \(3, ", items),
        ("names no model", with_manifest(trained, ranker={**manifest["ranker"], "models": 0})),
        ("has no file 'ranker_2.txt'", with_manifest(trained, ranker={**manifest["ranker"], "models": 3})),
    ]


def test_refused_versions_leave_the_old_one_serving(served: Served, tmp_path: Path) -> None:
    trained = served.version
    refused = refused_versions(trained, tmp_path)
    request = case_for(served, 4, n=50, k=10).request

    async def main() -> None:
        component = create(Config(compiled_trees=False))
        for words, version in refused:
            with pytest.raises(ArtifactError, match=words):
                await component.load(version)
        assert component.version is None
        await component.load(trained)
        async with serving(component, ranking_pb2_grpc.RankingServiceStub) as stub:
            before = await stub.Rank(request)
            for words, version in refused:
                with pytest.raises(ArtifactError, match=words):
                    await component.load(version)
                with pytest.raises(ArtifactError, match=words):
                    await component.load_pinned(replace(version, version="20000101T000000000000Z"))
                assert component.version == trained.version  # a refused version leaves the old one serving
                after = await stub.Rank(request)
                assert after == before
            assert before.artifact_version == trained.version and len(before.items) == 10

    asyncio.run(main())


# --- drift --------------------------------------------------------------------------------------------


def spread_of(served: Served) -> F64:
    """Each user feature's standard deviation over the version's users (0 where never known)."""
    known = np.isfinite(served.user_features).any(axis=0)  # latest-small has no demographics
    spread = np.zeros(len(USER_FEATURES))
    spread[known] = np.nanstd(served.user_features[:, known], axis=0)
    return spread


def drift_check(served: Served, tmp_path: Path, shift: float) -> tuple[int, dict[str, Any]]:
    """Rank 250 users as the gateway would (user values shifted by `shift` standard deviations), fetch
    the counts over the wire, and judge them with `recsys monitor drift`; (exit code, its report)."""
    n = int(served.version.manifest["pipeline"]["fusion"]["candidates"])
    spread = spread_of(served)
    saved = tmp_path / f"stats-{shift}.json"

    async def scenario(stub: Stub) -> None:
        for user in range(250):
            request = case_for(served, user, n=n).request
            values = np.asarray(request.user.values) + shift * spread
            del request.user.values[:]
            request.user.values.extend(values.tolist())
            await stub.Rank(request)
        await asyncio.sleep(0)  # the counting runs after each response
        stats = await stub.GetFeatureStats(ranking_pb2.GetFeatureStatsRequest())
        assert stats.artifact_version == served.version.version
        assert stats.current.rows == 250 * 8 and not stats.HasField("previous")
        assert [h.name for h in stats.reference] == [
            n for n in ranker_features(served.sources) if n in {h.name for h in stats.reference}
        ]
        saved.write_text(json.dumps(stats_to_json(stats)))

    run_with(served.version, scenario)
    report = tmp_path / f"report-{shift}"
    code = cli_main(["monitor", "drift", "--from", str(saved), "--report", str(report)])
    assert (report / "drift.png").stat().st_size > 0
    return code, json.loads((report / "drift.json").read_text())


def test_drift_is_flagged_on_a_shifted_stream_and_not_on_an_unshifted_one(
    served: Served, tmp_path: Path
) -> None:
    code, report = drift_check(served, tmp_path, 0.0)
    assert code == 0, report["flagged"]
    assert max(r["psi_vs_reference"] for r in report["table"] if r["psi_vs_reference"] is not None) < 0.2
    code, report = drift_check(served, tmp_path, 2.0)
    assert code == 1
    shifted = {n for n, s in zip(USER_FEATURES, spread_of(served), strict=True) if s > 0}
    assert shifted <= set(report["flagged"])
    # what does not depend on the user's values stays put (the cross features do depend on them)
    unshifted = {*ITEM_FEATURES, *(f"{s}_{f}" for s in served.sources for f in SOURCE_FEATURES)}
    assert not unshifted & set(report["flagged"]), report["flagged"]


def test_drift_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["monitor", "drift", "--ranking", f"127.0.0.1:{free_port()}"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli_main(["monitor", "drift", "--from", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsys monitor drift: --from") and "\n" not in err


# --- metrics ------------------------------------------------------------------------------------------


def test_metrics_count_requests_by_method_and_code_and_report_psi(served: Served) -> None:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    # The process's one provider: the instruments made at import time report through it from now on.
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    n = int(served.version.manifest["pipeline"]["fusion"]["candidates"])

    async def scenario(stub: Stub) -> None:
        for user in range(30):
            await stub.Rank(case_for(served, user, n=n).request)
        bad = case_for(served, 0, n=10).request
        bad.k = 0
        assert (await invalid(stub, bad)).code() == grpc.StatusCode.INVALID_ARGUMENT
        await asyncio.sleep(0)
        collected.append(reader.get_metrics_data())  # while the version is served (the PSI gauge)

    collected: list[Any] = []
    run_with(served.version, scenario, Config(compiled_trees=False, drift_sample_rows=10))
    (data,) = collected
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    requests = {
        (p.attributes["method"], p.attributes["code"]): p.value for p in points["recsys.rpc.requests"]
    }
    assert requests[("rank", "OK")] >= 30 and requests[("rank", "INVALID_ARGUMENT")] >= 1
    durations = [p for p in points["recsys.rpc.duration"] if p.attributes == {"method": "rank"}]
    assert durations and durations[0].count >= 31 and durations[0].sum > 0
    psi = {p.attributes["feature"]: p.value for p in points["recsys.ranking.feature_psi"]}
    assert {p.attributes["version"] for p in points["recsys.ranking.feature_psi"]} == {served.version.version}
    assert set(psi) <= set(ranker_features(served.sources)) and "fused_log_rank" in psi
    assert all(v >= 0 for v in psi.values())
