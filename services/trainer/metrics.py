"""Top-k ranking metrics with binary relevance (standard definitions, easy to check by hand).

recall@k    = |relevant in top k| / |relevant|
precision@k = |relevant in top k| / k
ndcg@k      = DCG@k / IDCG@k, DCG@k = sum over hits at 1-based rank r <= k of 1 / log2(r + 1),
              IDCG@k = DCG of a perfect list: min(|relevant|, k) hits at the top.
map@k       = (sum over hits at rank r <= k of precision@r) / |relevant|   (the Microsoft recommenders /
              Spark definition: divided by all the user's relevant items, not by min(|relevant|, k))
Users without relevant items are skipped by `mean_metrics` (their metrics are undefined).

Beyond accuracy (over the top-k lists of all users):
coverage          = |items recommended to anyone| / |catalogue|
intra-list div.   = mean over users of the mean pairwise (1 - cosine similarity) within the list
popularity bias   = mean train count of the recommended items (ARP), and the share of recommendations
                    that fall in the most popular 10% of the catalogue
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

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


def average_precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        return 0.0
    total, hits = 0.0, 0
    for rank, hit in enumerate(_hits(ranked, relevant, k), start=1):
        if hit:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def coverage(rankings: Mapping[str, Sequence[str]], catalogue_size: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top k."""
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    shown = {item for ranked in rankings.values() for item in list(ranked)[:k]}
    return len(shown) / catalogue_size


def intra_list_diversity(
    rankings: Mapping[str, Sequence[str]], vectors: Mapping[str, np.ndarray], k: int
) -> float:
    """Mean over users of the mean pairwise cosine distance of their top k (items without a vector or
    lists shorter than two are skipped)."""
    values: list[float] = []
    for ranked in rankings.values():
        rows = [vectors[i] for i in list(ranked)[:k] if i in vectors]
        if len(rows) < 2:
            continue
        m = np.asarray(rows, dtype=np.float64)
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        m = m / np.where(norms > 0, norms, 1.0)
        sim = m @ m.T
        n = m.shape[0]
        values.append(float((n * n - sim.sum() - (n - np.trace(sim))) / (n * (n - 1))))
    return float(np.mean(values)) if values else 0.0


def popularity_bias(
    rankings: Mapping[str, Sequence[str]], counts: Mapping[str, float], k: int
) -> dict[str, float]:
    """ARP (mean train count of recommended items) and the share of recommendations in the head
    (the most popular 10% of the items in `counts`)."""
    ordered = sorted(counts.values(), reverse=True)
    if not ordered:
        return {f"arp@{k}": 0.0, f"head_share@{k}": 0.0}
    threshold = ordered[max(0, int(np.ceil(len(ordered) * 0.1)) - 1)]
    shown = [item for ranked in rankings.values() for item in list(ranked)[:k]]
    if not shown:
        return {f"arp@{k}": 0.0, f"head_share@{k}": 0.0}
    pops = np.array([counts.get(i, 0.0) for i in shown], dtype=np.float64)
    return {f"arp@{k}": float(pops.mean()), f"head_share@{k}": float((pops >= threshold).mean())}


def per_user_metrics(
    rankings: Mapping[str, Sequence[str]], relevant: Mapping[str, Collection[str]], k: int
) -> tuple[list[str], dict[str, np.ndarray]]:
    """(users, {metric: one value per user}) over the users of `rankings` that have relevant items, in
    the order of `rankings`: what a paired comparison of two rankers on the same users needs."""
    users = [u for u in rankings if relevant.get(u)]
    metrics = {
        f"recall@{k}": recall_at_k,
        f"precision@{k}": precision_at_k,
        f"ndcg@{k}": ndcg_at_k,
        f"map@{k}": average_precision_at_k,
    }
    return users, {
        name: np.array([f(rankings[u], relevant[u], k) for u in users], dtype=np.float64)
        for name, f in metrics.items()
    }


def mean_metrics(
    rankings: Mapping[str, Sequence[str]], relevant: Mapping[str, Collection[str]], k: int
) -> dict[str, float]:
    """Mean recall/precision/ndcg/map@k over the users of `rankings` that have relevant items."""
    users, values = per_user_metrics(rankings, relevant, k)
    if not users:
        return {name: 0.0 for name in values}
    return {name: float(np.mean(v)) for name, v in values.items()}
