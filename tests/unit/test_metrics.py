from __future__ import annotations

import math

import pytest

from services.trainer.metrics import mean_metrics, ndcg_at_k, precision_at_k, recall_at_k


def test_recall_and_precision_count_hits_in_the_top_k() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    relevant = {"b", "e", "z"}
    assert recall_at_k(ranked, relevant, 3) == pytest.approx(1 / 3)  # only b in the top 3
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)
    assert precision_at_k(ranked, relevant, 3) == pytest.approx(1 / 3)
    assert precision_at_k(ranked, relevant, 5) == pytest.approx(2 / 5)
    # precision divides by k even when fewer than k items are ranked
    assert precision_at_k(["b"], relevant, 10) == pytest.approx(1 / 10)


def test_ndcg_by_hand() -> None:
    # hits at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); IDCG with 2 relevant = 1 + 1/log2(3)
    ranked = ["x", "a", "y", "b"]
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, {"a", "b"}, 4) == pytest.approx(expected)
    assert ndcg_at_k(["a", "b", "x"], {"a", "b"}, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"a"}, 2) == 0.0
    # the ideal list is cut at k: 5 relevant, k = 2 -> IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(["a", "x"], {"a", "b", "c", "d", "e"}, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_empty_relevance_and_bad_k() -> None:
    assert recall_at_k(["a"], set(), 10) == 0.0
    assert ndcg_at_k(["a"], set(), 10) == 0.0
    with pytest.raises(ValueError, match="k must be positive"):
        precision_at_k(["a"], {"a"}, 0)


def test_mean_metrics_skips_users_without_relevant_items() -> None:
    rankings = {"u1": ["a", "b"], "u2": ["c", "d"], "u3": ["e"]}
    relevant = {"u1": {"a"}, "u2": {"x"}, "u3": set()}
    result = mean_metrics(rankings, relevant, 2)
    assert result["recall@2"] == pytest.approx(0.5)  # (1 + 0) / 2; u3 skipped
    assert result["precision@2"] == pytest.approx(0.25)
    assert result["ndcg@2"] == pytest.approx(0.5)


def test_map_is_the_recommenders_definition_by_hand() -> None:
    from services.trainer.metrics import average_precision_at_k

    # hits at ranks 1 and 3 of the top 3; 4 relevant items: (1/1 + 2/3) / 4
    assert average_precision_at_k(["a", "x", "b", "c"], {"a", "b", "c", "d"}, 3) == pytest.approx(
        (1 + 2 / 3) / 4
    )
    assert average_precision_at_k(["x", "y"], {"a"}, 2) == 0.0
    assert average_precision_at_k(["a"], set(), 1) == 0.0
    result = mean_metrics({"u": ["x", "a"], "v": ["b", "y"]}, {"u": {"a"}, "v": {"b", "c"}}, 2)
    assert result["map@2"] == pytest.approx(((1 / 2) / 1 + (1 / 1) / 2) / 2)


def test_coverage_diversity_and_popularity_bias_by_hand() -> None:
    import numpy as np

    from services.trainer.metrics import coverage, intra_list_diversity, popularity_bias

    rankings = {"u": ["a", "b"], "v": ["a", "c"]}
    assert coverage(rankings, 4, 2) == pytest.approx(3 / 4)
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([0.0, 1.0])}
    # u: identical vectors, distance 0; v: orthogonal, distance 1
    assert intra_list_diversity(rankings, vectors, 2) == pytest.approx(0.5)
    counts = {"a": 10.0, "b": 2.0, "c": 4.0, "d": 0.0, "e": 0, "f": 0, "g": 0, "h": 0, "i": 0, "j": 0}
    bias = popularity_bias(rankings, counts, 2)
    assert bias["arp@2"] == pytest.approx((10 + 2 + 10 + 4) / 4)
    assert bias["head_share@2"] == pytest.approx(2 / 4)  # the head is the top 10% = {a}
