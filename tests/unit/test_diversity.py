"""Maximal marginal relevance (services.common.diversity), shared by the ranking service and the
trainer's evaluation."""

from __future__ import annotations

import numpy as np

from services.common.diversity import mmr


def test_mmr_trades_relevance_for_novelty_by_lambda() -> None:
    relevance = np.array([1.0, 0.9, 0.5])
    vectors = np.array([[1, 0], [1, 0.01], [0, 1]], dtype=np.float32)  # items 0 and 1 are near-duplicates
    order, scores = mmr(relevance, vectors, k=3, lam=0.99)
    assert order.tolist() == [0, 1, 2]  # lambda near 1: relevance order
    order, scores = mmr(relevance, vectors, k=3, lam=0.5)
    # Second pick: item 1 is worth 0.5*0.8 - 0.5*~1.0 < 0; item 2 is worth 0.5*0 - 0 = 0.
    assert order.tolist() == [0, 2, 1]
    assert np.all(np.diff(scores) <= 0)
    assert scores[0] == 0.5  # lam * 1.0, nothing chosen before


def test_the_scores_are_each_picks_marginal_value() -> None:
    # Picks: 0 (0.5 * 1), then 2 (0.5 * 0 - 0.5 * 0 = 0) over its duplicate 1 (0.5 * 0.5 - 0.5 * 1),
    # which comes last at -0.25.
    relevance = np.array([1.0, 0.5, 0.0])
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    order, scores = mmr(relevance, vectors, k=3, lam=0.5)
    assert order.tolist() == [0, 2, 1]
    np.testing.assert_allclose(scores, [0.5, 0.0, -0.25])
    order, scores = mmr(np.array([1.0, 0.8, 0.0]), vectors, k=3, lam=0.9)
    assert order.tolist() == [0, 1, 2]  # 0.9 * 0.8 - 0.1 * 1 = 0.62 beats 0, then 0 - 0.1 * 0 = 0
    np.testing.assert_allclose(scores, [0.9, 0.62, 0.0])


def test_unknown_items_are_similar_to_nothing_and_k_is_capped() -> None:
    relevance = np.array([3.0, 2.0, 1.0])
    vectors = np.array([[1, 0], [np.nan, np.nan], [0, 0]], dtype=np.float32)
    order, scores = mmr(relevance, vectors, k=10, lam=0.5)
    assert order.tolist() == [0, 1, 2] and len(scores) == 3


def test_equal_relevance_and_empty_input() -> None:
    # Equal relevance: every item counts as fully relevant, so similarity alone decides after the first.
    vectors = np.array([[1, 0], [1, 0.001], [0, 1]], dtype=np.float32)
    order, scores = mmr(np.full(3, 7.0), vectors, k=2, lam=0.5)
    assert order.tolist() == [0, 2]
    np.testing.assert_allclose(scores, [0.5, 0.5])
    order, scores = mmr(np.empty(0), np.empty((0, 2), dtype=np.float32), k=5, lam=0.5)
    assert order.size == 0 and scores.size == 0
