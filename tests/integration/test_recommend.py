"""Recommend and Feedback over the wire: four service processes, real Redis, real artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from recsys.v1 import common_pb2, features_pb2, features_pb2_grpc
from services.cli import main as cli_main
from services.client import Client, event
from services.common.artifacts import ArtifactVersion
from services.local import LocalPlatform


def history(trained: ArtifactVersion) -> dict[str, list[str]]:
    data: dict[str, list[str]] = json.loads(trained.file("user_history.json").read_text())
    return data


def check_list(items: list[common_pb2.ScoredItem], k: int, forbidden: set[str]) -> None:
    ids = [i.item_id for i in items]
    assert len(ids) == k
    assert len(set(ids)) == k, "items repeat"
    assert not set(ids) & forbidden, "an excluded or already-seen item came back"
    scores = [i.score for i in items]
    assert scores == sorted(scores, reverse=True), "scores are not sorted best first"


def test_warm_users_get_k_unseen_items_ranked(client: Client, trained: ArtifactVersion) -> None:
    seen = history(trained)
    warm = sorted(seen, key=lambda u: len(seen[u]))[:: max(1, len(seen) // 5)][:5]
    for user in warm:
        response = client.recommend(user, k=20, debug=True)
        assert not response.degraded, response.degraded_reasons
        check_list(list(response.items), 20, set(seen[user]))
        # The caller's exclusions hold as well: drop the current top 5 and ask again.
        exclude = [i.item_id for i in response.items[:5]]
        again = client.recommend(user, k=20, exclude=exclude)
        check_list(list(again.items), 20, set(seen[user]) | set(exclude))
        assert {t.stage for t in response.timings} >= {"features", "retrieval", "ranking", "total"}
        assert [a.experiment for a in response.assignments] == ["candidates"]


def test_explanations_through_the_gateway_sum_to_the_ranker_score(client: Client) -> None:
    response = client.recommend("1", k=10, explain=True)
    assert not response.degraded
    assert [e.item_id for e in response.explanations] == [i.item_id for i in response.items]
    for why in response.explanations:
        assert not why.unavailable and why.sources and why.contributions
        total = why.base + sum(c.contribution for c in why.contributions)
        assert abs(total - why.ranker_score) < 1e-4
    assert not client.recommend("1", k=10).explanations


def test_drift_from_the_rpc_and_from_the_exported_metrics_agree_and_flag_the_candidates_arm(
    client: Client,
    platform: LocalPlatform,
    metrics_ports: dict[str, int],
    trained: ArtifactVersion,
    tmp_path: Path,
) -> None:
    """Half the users rank 200 candidates (the default experiments file's arm) where the version was
    trained on 100: the fused position's distribution moves, and both ways of reading the counts say so."""
    users = json.loads(trained.file("user_ids.json").read_text())[:150]
    for user in users:
        client.recommend(user, k=10)
    rpc, metrics = tmp_path / "rpc.json", tmp_path / "metrics.json"
    by_rpc = cli_main(["monitor", "drift", "--ranking", platform.address("ranking"), "--save", str(rpc)])
    by_metrics = cli_main(
        [
            "monitor",
            "drift",
            "--metrics-url",
            f"http://127.0.0.1:{metrics_ports['ranking']}/metrics",
            "--artifacts-dir",
            str(trained.path.parent),
            "--save",
            str(metrics),
            "--report",
            str(tmp_path / "report"),
        ]
    )
    from_rpc, from_metrics = json.loads(rpc.read_text()), json.loads(metrics.read_text())
    assert from_rpc["current"]["rows"] >= 150 * 8
    assert from_metrics["current"]["features"] == from_rpc["current"]["features"]
    assert from_metrics["reference"] == from_rpc["reference"]
    assert by_rpc == by_metrics == 1
    report = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert "fused_log_rank" in report["flagged"]


def test_heaviest_user_still_gets_unseen_items(client: Client, trained: ArtifactVersion) -> None:
    seen = history(trained)
    heaviest = max(seen, key=lambda u: len(seen[u]))
    response = client.recommend(heaviest, k=50)
    check_list(list(response.items), 50, set(seen[heaviest]))


def test_cold_user_gets_popular_items(client: Client) -> None:
    response = client.recommend("never-seen-before", k=10)
    assert not response.degraded
    check_list(list(response.items), 10, set())


def test_arm_assignment_is_sticky(client: Client) -> None:
    arms = {client.recommend("sticky-user", k=3).assignments[0].arm for _ in range(5)}
    assert len(arms) == 1


def test_click_removes_the_item_from_the_next_recommendation(
    client: Client, trained: ArtifactVersion
) -> None:
    user = next(iter(history(trained)))
    top = client.recommend(user, k=10).items[0].item_id
    assert client.feedback([event(user, top, "click")]) == 1
    after = [i.item_id for i in client.recommend(user, k=10).items]
    assert top not in after


def test_cold_user_clicks_shape_their_next_recommendation(client: Client) -> None:
    user = "cold-then-clicks"
    before = [i.item_id for i in client.recommend(user, k=10).items]
    client.feedback([event(user, before[0], "click"), event(user, before[1], "rating", 5.0)])
    after = client.recommend(user, k=10).items
    assert {before[0], before[1]}.isdisjoint(i.item_id for i in after)
    # With recent items the user is no longer cold: candidates come from their neighbourhood.
    assert {i.source for i in after} - {"popular"}


BAD_RECOMMENDS = [
    ({"user_id": "", "k": 10}, "user_id"),
    ({"user_id": "u", "k": 0}, "k"),
    ({"user_id": "u", "k": -3}, "k"),
    ({"user_id": "u", "k": 1001}, "k"),
    ({"user_id": "u", "k": 10, "exclude_item_ids": [str(i) for i in range(1001)]}, "exclude_item_ids"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_RECOMMENDS)
def test_bad_recommend_is_invalid_argument(client: Client, fields: dict[str, object], named: str) -> None:
    from recsys.v1 import gateway_pb2

    with pytest.raises(grpc.RpcError) as caught:
        client.stub.Recommend(gateway_pb2.RecommendRequest(**fields), timeout=5)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(named + ":")
    assert len(client.recommend("u", k=3).items) == 3, "the gateway stopped serving"


BAD_EVENTS = [
    (common_pb2.Event(user_id="u", item_id="1", type=common_pb2.EVENT_TYPE_UNSPECIFIED), "type"),
    (common_pb2.Event(user_id="u", item_id="1", type=42), "type"),  # type: ignore[arg-type]
    (common_pb2.Event(user_id="", item_id="1", type=common_pb2.EVENT_TYPE_CLICK), "user_id"),
    (common_pb2.Event(user_id="u", item_id="", type=common_pb2.EVENT_TYPE_CLICK), "item_id"),
    (
        common_pb2.Event(user_id="u", item_id="1", type=common_pb2.EVENT_TYPE_RATING, rating=float("nan")),
        "rating",
    ),
    (
        common_pb2.Event(user_id="u", item_id="1", type=common_pb2.EVENT_TYPE_RATING, rating=float("inf")),
        "rating",
    ),
]


@pytest.mark.parametrize(("bad", "field"), BAD_EVENTS)
def test_bad_feedback_is_invalid_argument_and_writes_nothing(
    client: Client, platform: LocalPlatform, bad: common_pb2.Event, field: str
) -> None:
    user = f"all-or-nothing-{field}-{bad.type}-{bad.rating}"
    with pytest.raises(grpc.RpcError) as caught:
        client.feedback([event(user, "1", "click"), bad])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"events[1].{field}:")
    # All or nothing: the valid click before the bad event was not applied either.
    with grpc.insecure_channel(platform.address("features")) as channel:
        profile = features_pb2_grpc.FeatureServiceStub(channel).GetUserFeatures(
            features_pb2.GetUserFeaturesRequest(user_id=user), timeout=5
        )
    assert "1" not in profile.user.seen_item_ids
    assert client.feedback([event(user, "1", "click")]) == 1, "the gateway stopped accepting feedback"


def test_empty_feedback_is_invalid_argument(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.feedback([])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events" in (caught.value.details() or "")
