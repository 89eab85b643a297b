"""What the trainer computes is what the services serve, over the wire.

The pipeline is fitted in this process; its exported version is served by the four services as separate
processes. For a sample of users the candidates, every source column, the ranker's feature rows and its
scores that the services send over gRPC equal the ones the fitted objects compute in memory, and the
gateway answers with the trainer's own top 10. Not circular: one side is the trainer's objects before
export, the other the files loaded by other processes, the protobuf round trips, the features service's
recent and seen lists, and the compiled trees.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from recsys.v1 import (
    features_pb2,
    features_pb2_grpc,
    ranking_pb2,
    ranking_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.client import Client
from services.common.artifacts import ArtifactVersion
from services.local import LocalPlatform
from services.trainer.data import load
from services.trainer.export import export
from services.trainer.pipeline import Fitted, Progress, fit
from tests.support import BUNDLED_DATA, RELAXED_BUDGETS, light_pipeline

K = 10


@dataclass(frozen=True)
class Served:
    fitted: Fitted
    version: ArtifactVersion
    platform: LocalPlatform


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = load(BUNDLED_DATA)
    log = data.log.take(np.isin(data.log.users.astype(int), np.arange(1, 241)))  # 240 users, quick to fit
    part = data.known_from(log)
    fitted = fit(part, log, light_pipeline())
    root = tmp_path_factory.mktemp("parity")
    version = export(root, fitted, {"data": {"source": "parity"}, "metrics": {}})
    (root / "experiments.yaml").write_text("experiments: []\n")  # no arm changes the pipeline
    platform = LocalPlatform.on_free_ports(
        root,
        root / "logs",
        event_log=root / "events.jsonl",
        extra_args={"gateway": [*RELAXED_BUDGETS, "--experiments", str(root / "experiments.yaml")]},
    )
    with platform:
        deadline = time.monotonic() + 300
        while "ranker compiled" not in (platform.log_dir / "ranking.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, "the ranker did not compile"
            time.sleep(0.5)
        yield Served(fitted, version, platform)


def sample(fitted: Fitted) -> list[str]:
    users = sorted(fitted.stage.histories, key=lambda u: -len(fitted.stage.histories[u]))
    return users[:3] + users[len(users) // 2 :: 25][:12]  # the heaviest, and a spread


def test_candidates_columns_features_and_scores_equal_the_trainers(served: Served) -> None:
    fitted = served.fitted
    ids = fitted.universe.item_ids
    with (
        grpc.insecure_channel(served.platform.address("features")) as f,
        grpc.insecure_channel(served.platform.address("retrieval")) as r,
        grpc.insecure_channel(served.platform.address("ranking")) as k,
    ):
        features = features_pb2_grpc.FeatureServiceStub(f)
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(r)
        ranking = ranking_pb2_grpc.RankingServiceStub(k)
        for user_id in sample(fitted):
            expected = fitted.stage.candidates(user_id, fitted.config)
            matrix = fitted.stage.features(user_id, expected, fitted.config)
            scores = fitted.ranker.score(matrix)

            user = features.GetUserFeatures(
                features_pb2.GetUserFeaturesRequest(user_id=user_id), timeout=10
            ).user
            found = retrieval.Retrieve(retrieval_pb2.RetrieveRequest(user_id=user_id, user=user), timeout=10)
            cands = found.candidates
            assert list(cands.item_ids) == [ids[i] for i in expected.rows], user_id
            np.testing.assert_array_equal(np.asarray(cands.scores, np.float32), expected.fused)
            assert {c.source for c in cands.columns} == set(expected.columns)
            for column in cands.columns:
                mine = expected.columns[column.source]
                np.testing.assert_array_equal(
                    np.asarray(column.scores, np.float32), mine.scores, err_msg=column.source
                )
                np.testing.assert_array_equal(
                    np.asarray(column.ranks, np.float32), mine.ranks, err_msg=column.source
                )
                assert np.float32(column.best) == np.float32(mine.best) or np.isnan(mine.best)

            ranked = ranking.Rank(
                ranking_pb2.RankRequest(user=user, candidates=cands, k=K, debug=True), timeout=10
            )
            order = np.argsort(-scores, kind="stable")[:K]
            assert [i.item_id for i in ranked.items] == [ids[expected.rows[j]] for j in order], user_id
            np.testing.assert_allclose([i.score for i in ranked.items], scores[order], rtol=0, atol=1e-5)
            rows = np.frombuffer(ranked.features, dtype="<f4").reshape(K, -1)
            assert list(ranked.feature_names) == fitted.config.feature_names
            np.testing.assert_array_equal(rows, matrix[order])


def test_the_gateway_answers_with_the_trainers_top_10(served: Served) -> None:
    fitted = served.fitted
    users = sample(fitted)
    mine = fitted.rank(users, Progress(False))
    with Client(served.platform.address("gateway")) as client:
        for user_id in users:
            response = client.recommend(user_id, k=K)
            assert not response.degraded, response.degraded_reasons
            assert response.artifact_version == served.version.version
            cand, scores = mine[user_id]
            order = np.argsort(-scores, kind="stable")[:K]
            assert [i.item_id for i in response.items] == fitted.universe.ids(cand.rows[order]), user_id


def test_a_click_changes_the_served_candidates_at_once(served: Served) -> None:
    from services.client import event

    user_id = sample(served.fitted)[-1]
    with (
        Client(served.platform.address("gateway")) as client,
        grpc.insecure_channel(served.platform.address("features")) as f,
        grpc.insecure_channel(served.platform.address("retrieval")) as r,
    ):
        features = features_pb2_grpc.FeatureServiceStub(f)
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(r)

        def candidates() -> list[str]:
            user = features.GetUserFeatures(
                features_pb2.GetUserFeaturesRequest(user_id=user_id), timeout=10
            ).user
            found = retrieval.Retrieve(retrieval_pb2.RetrieveRequest(user_id=user_id, user=user), timeout=10)
            return list(found.candidates.item_ids)

        before = candidates()
        clicked = before[0]
        client.feedback([event(user_id, clicked, "click")])
        after = candidates()
        assert clicked not in after and after != before
        assert clicked not in [i.item_id for i in client.recommend(user_id, k=K).items]
