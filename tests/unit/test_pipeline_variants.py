"""The per-request pipeline settings experiment arms vary (services.gateway.experiments: `sources`,
`ranking`, `diversity`), over the real retrieval and ranking services serving the trained version: what
each setting changes in what the next stage gets, and that the next stage takes it."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common import candidates
from services.common.artifacts import ArtifactVersion
from services.common.sources.base import HISTORY_LIMIT
from services.ranking.service import Config as RankingConfig
from services.ranking.service import create as create_ranking
from services.retrieval.service import Config as RetrievalConfig
from services.retrieval.service import create as create_retrieval
from tests.support import serving

if TYPE_CHECKING:  # the async stub classes exist only for type checkers
    from recsys.v1.ranking_pb2_grpc import RankingServiceAsyncStub as RankingStub
    from recsys.v1.retrieval_pb2_grpc import RetrievalServiceAsyncStub as RetrievalStub


@dataclass(frozen=True)
class Version:
    artifact: ArtifactVersion
    user_ids: list[str]
    history: dict[str, list[str]]
    user_values: npt.NDArray[np.float32]
    row: dict[str, int]
    #: the vectors the ranking service diversifies with (manifest diversity.file), unit length
    unit: npt.NDArray[np.float64]

    def user(self, user_id: str) -> common_pb2.UserFeatures:
        """The user as the features service returns them (profile row, recent items, all seen)."""
        items = self.history[user_id]
        return common_pb2.UserFeatures(
            user_id=user_id,
            known=True,
            values=self.user_values[self.user_ids.index(user_id)].tolist(),
            recent_item_ids=items[:HISTORY_LIMIT],
            seen_item_ids=items,
        )

    def similarity(self, item_ids: Sequence[str]) -> float:
        """Mean cosine similarity of the distinct pairs of `item_ids`."""
        x = self.unit[[self.row[i] for i in item_ids]]
        sims = x @ x.T
        n = len(item_ids)
        return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


@pytest.fixture(scope="module")
def v(trained: ArtifactVersion) -> Version:
    item_ids: list[str] = json.loads(trained.file("item_ids.json").read_text())
    vectors = np.load(trained.file(trained.manifest["diversity"]["file"])).astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return Version(
        trained,
        json.loads(trained.file("user_ids.json").read_text()),
        json.loads(trained.file("user_history.json").read_text()),
        np.load(trained.file("user_features.npy")),
        {item: row for row, item in enumerate(item_ids)},
        np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0),
    )


def run(v: Version, scenario: Callable[[RetrievalStub, RankingStub], Awaitable[None]]) -> None:
    """`scenario` against both stages serving the version, each on a real server."""

    async def main() -> None:
        retrieval = create_retrieval(RetrievalConfig())
        await retrieval.load(v.artifact)
        ranking = create_ranking(RankingConfig(compiled_trees=False))
        await ranking.load(v.artifact)
        async with (
            serving(retrieval, retrieval_pb2_grpc.RetrievalServiceStub) as retrieve,
            serving(ranking, ranking_pb2_grpc.RankingServiceStub) as rank,
        ):
            await scenario(retrieve, rank)

    asyncio.run(main())


def features(response: ranking_pb2.RankResponse) -> dict[str, npt.NDArray[np.float32]]:
    """The debug feature rows of a Rank response, by feature name."""
    matrix = np.frombuffer(response.features, dtype="<f4").reshape(len(response.items), -1)
    return {name: matrix[:, i] for i, name in enumerate(response.feature_names)}


def assert_ranked(
    response: ranking_pb2.RankResponse, k: int, pool: common_pb2.Candidates, seen: set[str]
) -> None:
    ids = [i.item_id for i in response.items]
    assert len(ids) == k == len(set(ids))
    assert set(ids) <= set(pool.item_ids) and not set(ids) & seen
    scores = [i.score for i in response.items]
    assert all(a >= b for a, b in itertools.pairwise(scores)), "not best first"
    origin = {item: candidates.source_of(pool, p) for p, item in enumerate(pool.item_ids)}
    assert [i.source for i in response.items] == [origin[i] for i in ids], "each item keeps its origin"


def test_a_sources_arm_ranks_on_the_columns_of_the_sources_it_ran(v: Version) -> None:
    user_id = v.user_ids[0]
    user = v.user(user_id)
    seen = set(v.history[user_id])
    names = v.artifact.manifest["features"]["ranker"]

    async def scenario(retrieve: RetrievalStub, rank: RankingStub) -> None:
        for allowed in ([], ["als", "recent", "popular"]):
            found = await retrieve.Retrieve(retrieval_pb2.RetrieveRequest(user=user, n=100, sources=allowed))
            pool = found.candidates
            ran = [c.source for c in pool.columns]
            assert not allowed or sorted(ran) == sorted(allowed)
            ranked = await rank.Rank(ranking_pb2.RankRequest(user=user, candidates=pool, k=20, debug=True))
            assert ranked.artifact_version == found.artifact_version == v.artifact.version
            assert_ranked(ranked, 20, pool, seen)
            assert list(ranked.feature_names) == names
            rows = features(ranked)
            for s in v.artifact.manifest["pipeline"]["sources"]:
                if s in ran:  # a source that ran scored every candidate
                    assert np.isfinite(rows[f"{s}_list_z"]).all(), s
                else:  # one that did not is missing for the ranker, not zero
                    assert np.isnan(rows[f"{s}_log_rank"]).all() and np.isnan(rows[f"{s}_list_z"]).all(), s
            if allowed:  # als, the only fused one, proposed every candidate: each has its als rank
                assert np.isfinite(rows["als_log_rank"]).all()
        # a cold user under an arm without popular: nothing to rank, and ranking nothing returns nothing
        cold = await retrieve.Retrieve(retrieval_pb2.RetrieveRequest(user_id="cold", sources=["als"]))
        assert len(cold.candidates.item_ids) == 0
        empty = await rank.Rank(ranking_pb2.RankRequest(candidates=cold.candidates, k=10))
        assert len(empty.items) == 0 and empty.artifact_version == v.artifact.version

    run(v, scenario)


def test_ranking_off_serves_retrieval_order_and_ranking_reorders_the_same_pool(v: Version) -> None:
    """An arm with `ranking: false` serves the head of the retrieval response (as the gateway does):
    the best fused candidates, each with its fused score and origin. Ranking chooses among the same."""
    user_id = v.user_ids[len(v.user_ids) // 2]
    user = v.user(user_id)

    async def scenario(retrieve: RetrievalStub, rank: RankingStub) -> None:
        found = await retrieve.Retrieve(retrieval_pb2.RetrieveRequest(user=user, min_n=10))
        pool = found.candidates
        head = candidates.head(pool, 10)
        assert [i.item_id for i in head] == list(pool.item_ids[:10])
        assert [i.score for i in head] == list(pool.scores[:10])
        assert [i.source for i in head] == [candidates.source_of(pool, p) for p in range(10)]
        assert all(a.score >= b.score for a, b in itertools.pairwise(head))
        assert {i.source for i in head} <= set(v.artifact.manifest["pipeline"]["fusion"]["fused"])
        everything = len(pool.item_ids)
        ranked = await rank.Rank(ranking_pb2.RankRequest(user=user, candidates=pool, k=everything))
        assert_ranked(ranked, everything, pool, set(v.history[user_id]))
        assert {i.item_id for i in ranked.items} == set(pool.item_ids)  # a permutation of the pool

    run(v, scenario)


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_ranking_with_mmr_keeps_k_distinct_items_and_sorted_scores(v: Version, lam: float) -> None:
    users = v.user_ids[::150]

    async def scenario(retrieve: RetrievalStub, rank: RankingStub) -> None:
        for bad in (1.0, 1.5, -0.1):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await rank.Rank(ranking_pb2.RankRequest(k=1, mmr_lambda=bad))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (caught.value.details() or "").startswith("mmr_lambda:")
        gained = []
        for user_id in users:
            user = v.user(user_id)
            pool = (await retrieve.Retrieve(retrieval_pb2.RetrieveRequest(user=user, n=200))).candidates
            plain = await rank.Rank(ranking_pb2.RankRequest(user=user, candidates=pool, k=20))
            diverse = await rank.Rank(
                ranking_pb2.RankRequest(user=user, candidates=pool, k=20, mmr_lambda=lam)
            )
            assert_ranked(diverse, 20, pool, set(v.history[user_id]))
            if lam == 0.0:  # 0 is off: relevance alone
                assert diverse == plain
            else:
                chosen = [i.item_id for i in diverse.items]
                assert len(set(chosen) - {i.item_id for i in plain.items}) > 0
                gained.append(v.similarity([i.item_id for i in plain.items]) - v.similarity(chosen))
        if lam > 0:  # items more unlike each other than relevance alone picks
            assert np.mean(gained) > 0, gained

    run(v, scenario)
