"""Top-k ranking metrics with binary relevance (standard definitions, easy to check by hand).

recall@k    = |relevant in top k| / |relevant|
precision@k = |relevant in top k| / k
ndcg@k      = DCG@k / IDCG@k, DCG@k = sum over hits at 1-based rank r <= k of 1 / log2(r + 1),
              IDCG@k = DCG of a perfect list: min(|relevant|, k) hits at the top.
Users without relevant items are skipped by `mean_metrics` (their metrics are undefined).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np


def _hits(ranked: Sequence[str], relevant: Collection[str], k: int) -> list[bool]:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return [item in relevant for item in list(ranked)[:k]]


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        return 0.0
    return sum(_hits(ranked, relevant, k)) / len(relevant)


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    return sum(_hits(ranked, relevant, k)) / k


def dcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    return sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(_hits(ranked, relevant, k)) if hit)


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        return 0.0
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg_at_k(ranked, relevant, k) / ideal


def mean_metrics(
    rankings: Mapping[str, Sequence[str]], relevant: Mapping[str, Collection[str]], k: int
) -> dict[str, float]:
    """Mean recall/precision/ndcg@k over the users of `rankings` that have relevant items."""
    users = [u for u in rankings if relevant.get(u)]
    if not users:
        return {f"recall@{k}": 0.0, f"precision@{k}": 0.0, f"ndcg@{k}": 0.0}

    def mean(values: Iterable[float]) -> float:
        return float(np.mean(list(values)))

    return {
        f"recall@{k}": mean(recall_at_k(rankings[u], relevant[u], k) for u in users),
        f"precision@{k}": mean(precision_at_k(rankings[u], relevant[u], k) for u in users),
        f"ndcg@{k}": mean(ndcg_at_k(rankings[u], relevant[u], k) for u in users),
    }
