"""The per-request pipeline settings experiments vary: retrieval sources and the ranker's MMR lambda."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest

from recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common import candidates
from services.common.artifacts import ArtifactVersion
from services.ranking.service import Config as RankingConfig
from services.ranking.service import create as create_ranking
from services.retrieval.service import Config as RetrievalConfig
from services.retrieval.service import create as create_retrieval
from tests.support import serving


def retrieve_all(trained: ArtifactVersion, requests: list[retrieval_pb2.RetrieveRequest]) -> list[object]:
    async def main() -> list[object]:
        component = create_retrieval(RetrievalConfig())
        await component.load(trained)
        async with serving(component, retrieval_pb2_grpc.RetrievalServiceStub) as stub:
            out: list[object] = []
            for request in requests:
                try:
                    out.append(await stub.Retrieve(request))
                except grpc.aio.AioRpcError as e:
                    out.append(e)
            return out

    return asyncio.run(main())


def test_retrieval_sources_limit_where_candidates_come_from(trained: ArtifactVersion) -> None:
    user = np.load(trained.file("user_embeddings.npy"))[0].tolist()
    recent = json.loads(trained.file("user_history.json").read_text())[
        json.loads(trained.file("user_ids.json").read_text())[0]
    ][:5]
    base = {"user_id": "u", "user_embedding": user, "recent_item_ids": recent, "n": 50}
    every, recent_only, ann_only_cold, bad = retrieve_all(
        trained,
        [
            retrieval_pb2.RetrieveRequest(**base),
            retrieval_pb2.RetrieveRequest(**base, sources=["recent"]),
            retrieval_pb2.RetrieveRequest(user_id="cold", n=50, sources=["ann"]),
            retrieval_pb2.RetrieveRequest(**base, sources=["ann", "bm25"]),
        ],
    )
    assert isinstance(every, retrieval_pb2.RetrieveResponse)
    assert isinstance(recent_only, retrieval_pb2.RetrieveResponse)
    assert isinstance(ann_only_cold, retrieval_pb2.RetrieveResponse)
    assert list(every.candidates.source_names) == ["ann"]
    assert list(recent_only.candidates.source_names) == ["recent"]
    assert len(recent_only.candidates.item_ids) == 50
    assert len(ann_only_cold.candidates.item_ids) == 0  # no vector and no popular allowed
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad.details() or "").startswith("sources:")


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_ranking_with_mmr_keeps_k_distinct_items_and_sorted_scores(
    trained: ArtifactVersion, lam: float
) -> None:
    ids = json.loads(trained.file("item_ids.json").read_text())[:200]

    async def main() -> ranking_pb2.RankResponse:
        component = create_ranking(RankingConfig(compiled_trees=False))
        await component.load(trained)
        async with serving(component, ranking_pb2_grpc.RankingServiceStub) as stub:
            request = ranking_pb2.RankRequest(
                user=common_pb2.UserFeatures(user_id="u"),
                candidates=candidates.build([(ids, 1 - np.arange(200) / 200, "ann")]),
                k=20,
                mmr_lambda=lam,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Rank(ranking_pb2.RankRequest(k=1, mmr_lambda=1.5))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (caught.value.details() or "").startswith("mmr_lambda:")
            return await stub.Rank(request)

    response = asyncio.run(main())
    items = [i.item_id for i in response.items]
    assert len(items) == 20 == len(set(items))
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)
