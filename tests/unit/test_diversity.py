from __future__ import annotations

import numpy as np

from services.ranking.diversity import mmr


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


def test_unknown_items_are_similar_to_nothing_and_k_is_capped() -> None:
    relevance = np.array([3.0, 2.0, 1.0])
    vectors = np.array([[1, 0], [np.nan, np.nan], [0, 0]], dtype=np.float32)
    order, scores = mmr(relevance, vectors, k=10, lam=0.5)
    assert order.tolist() == [0, 1, 2] and len(scores) == 3
