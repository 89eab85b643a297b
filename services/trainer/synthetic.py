"""A synthetic catalogue at any scale (1M items and more) that the same services load: clustered item
and user embeddings, Zipf popularity, item and user feature rows in the real schema, user histories,
an ANN index tuned to a recall target against exact search, and a LightGBM LambdaRank ranker with a
fixed number of trees trained on synthetic relevance. For performance work, not for quality numbers.

    recsys synth --items 1000000 --users 20000 --out artifacts-1m
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common import ranking_features as rf
from services.common.artifacts import ArtifactVersion, new_version_name, publish, staging_dir

F32 = npt.NDArray[np.float32]

#: Below this many items an exact flat index is fast enough; above it, IVF with a tuned nprobe.
FLAT_MAX_ITEMS = 200_000
#: Neighbours per item in the synthetic sequence-neighbour file (the trainer keeps 50 on real data;
#: 20 keeps the file at 160 MB for 1M items).
SYNTHETIC_NEIGHBOURS = 20


@dataclass(frozen=True)
class SyntheticConfig:
    out: Path
    items: int = 1_000_000
    users: int = 20_000
    dim: int = 64
    clusters: int = 256
    history: int = 50  # mean items per user history
    trees: int = 300
    candidates: int = 500
    recall_target: float = 0.95
    seed: int = 7
    threads: int = 2

    def validate(self) -> None:
        for name, low in (("items", 1000), ("users", 10), ("dim", 2), ("clusters", 1), ("trees", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: must be at least {low}, got {getattr(self, name)}")
        if not 1 <= self.candidates <= self.items:
            raise ValueError(f"candidates: must be in 1..items, got {self.candidates}")
        if not 0 < self.recall_target <= 1:
            raise ValueError(f"recall_target: must be in (0, 1], got {self.recall_target}")


def _say(message: str) -> None:
    print(f"synth: {message}", file=sys.stderr, flush=True)


def _clustered(
    rng: np.random.Generator, centers: F32, count: int, spread: float
) -> tuple[F32, npt.NDArray[np.int64]]:
    cluster = rng.integers(0, centers.shape[0], count)
    vectors = np.empty((count, centers.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):  # bounded temporaries at 1M+
        end = min(count, start + 100_000)
        noise = rng.standard_normal((end - start, centers.shape[1]), dtype=np.float32) * spread
        block = centers[cluster[start:end]] + noise
        vectors[start:end] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors, cluster


def cluster_neighbours(
    rng: np.random.Generator, cluster: npt.NDArray[np.int64], keep: int
) -> rf.ItemNeighbours:
    """`keep` random neighbours per item from its own cluster (the shape, not the meaning, of the
    trainer's sequence neighbours: what the ranking service's lookups cost at this catalogue size)."""
    order = np.argsort(cluster, kind="stable")
    sizes = np.bincount(cluster)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    picks = starts[cluster][:, None] + (rng.random((len(cluster), keep)) * sizes[cluster][:, None]).astype(
        np.int64
    )
    indptr = np.arange(0, (len(cluster) + 1) * keep, keep, dtype=np.int64)
    return rf.ItemNeighbours(
        indptr, order[picks].reshape(-1).astype(np.int32), rng.random(picks.size, dtype=np.float32)
    )


def build_index(
    items: F32, queries: F32, k: int, target: float, seed: int, flat_max: int = FLAT_MAX_ITEMS
) -> tuple[Any, dict[str, Any]]:
    """Flat inner product up to `flat_max` items; else IVF-Flat with the smallest power-of-two nprobe whose
    recall@k against exact search on `queries` reaches `target`."""
    import faiss

    n, dim = items.shape
    exact = faiss.IndexFlatIP(dim)
    exact.add(items)
    if n <= flat_max:
        return exact, {"type": "flat", f"recall@{k}": 1.0}
    _, truth = exact.search(queries, k)
    nlist = int(4 * math.sqrt(n))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)
    index.train(items[np.sort(sample)])
    index.add(items)
    del exact
    recall = 0.0
    nprobe = 1
    while nprobe <= nlist:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)]))
        _say(f"IVF{nlist} nprobe={nprobe}: recall@{k}={recall:.4f}")
        if recall >= target:
            break
        nprobe *= 2
    return index, {
        "type": f"ivf{nlist},flat",
        "nprobe": index.nprobe,
        f"recall@{k}": recall,
        "queries": len(queries),
    }


def train_ranker(
    rng: np.random.Generator,
    index: Any,
    items: F32,
    item_features: F32,
    users: F32,
    user_features: F32,
    config: SyntheticConfig,
) -> Any:
    """LambdaRank with exactly `trees` trees on candidates from the index, relevance from the true affinity."""
    import lightgbm as lgb

    groups = min(200, users.shape[0])
    sample = rng.choice(users.shape[0], groups, replace=False)
    scores, rows = index.search(users[sample], config.candidates)
    matrices, labels = [], []
    for g, u in enumerate(sample):
        valid = rows[g] >= 0
        r, s = rows[g][valid], scores[g][valid]
        matrices.append(rf.assemble(user_features[u], item_features[r], s, items[r], users[u]))
        affinity = s + 0.3 * item_features[r, 0] / 10 + rng.normal(0, 0.05, len(r))
        labels.append(np.digitize(affinity, np.quantile(affinity, [0.7, 0.9, 0.97])))
    data = lgb.Dataset(
        np.vstack(matrices),
        np.concatenate(labels),
        group=[len(x) for x in labels],
        feature_name=list(rf.RANKER_FEATURES),
        free_raw_data=False,
    )
    params = {
        "objective": "lambdarank",
        "num_leaves": 31,
        "learning_rate": 0.05,
        "min_data_in_leaf": 20,
        "verbose": -1,
        "num_threads": config.threads,
        "seed": config.seed,
    }
    return lgb.train(params, data, num_boost_round=config.trees)


def generate(config: SyntheticConfig) -> ArtifactVersion:
    import faiss

    config.validate()
    faiss.omp_set_num_threads(config.threads)
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    centers = rng.standard_normal((config.clusters, config.dim), dtype=np.float32)
    _say(f"{config.items:,} items, {config.users:,} users, dim {config.dim}")
    items, item_cluster = _clustered(rng, centers, config.items, spread=0.6)
    users, user_cluster = _clustered(rng, centers, config.users, spread=0.4)

    # Zipf popularity; item feature rows in the real schema (log count where the schema has one).
    counts = np.floor(1e5 / np.arange(1, config.items + 1) ** 1.1)[rng.permutation(config.items)]
    item_features = rng.standard_normal((config.items, len(rf.ITEM_FEATURES)), dtype=np.float32)
    item_features[:, 0] = np.log1p(counts)
    user_features = rng.standard_normal((config.users, len(rf.USER_FEATURES)), dtype=np.float32)
    item_ids = [f"i{i}" for i in range(config.items)]
    user_ids = [f"u{u}" for u in range(config.users)]

    queries = users[rng.choice(config.users, min(50, config.users), replace=False)]
    _say("building the index")
    index, index_info = build_index(items, queries, config.candidates, config.recall_target, config.seed)
    _say(f"training the ranker ({config.trees} trees)")
    booster = train_ranker(rng, index, items, item_features, users, user_features, config)

    version = new_version_name()
    config.out.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(config.out, version)
    _say("writing the artifact version")
    np.save(staging / "item_embeddings.npy", items)
    np.save(staging / "user_embeddings.npy", users)
    np.save(staging / "item_features.npy", item_features)
    np.save(staging / "user_features.npy", user_features)
    faiss.write_index(index, str(staging / "item_index.faiss"))
    cluster_neighbours(rng, item_cluster, SYNTHETIC_NEIGHBOURS).save(staging / rf.NEIGHBOURS_FILE)
    booster.save_model(str(staging / "ranker.txt"))
    (staging / "item_ids.json").write_text(json.dumps(item_ids))
    (staging / "user_ids.json").write_text(json.dumps(user_ids))
    (staging / "popular.json").write_text(
        json.dumps([item_ids[i] for i in np.argsort(-counts, kind="stable")])
    )
    # Histories: items near each user's cluster centre, through the index (one batched search).
    _, near = index.search(centers[user_cluster], config.history * 2)
    history = {
        user_ids[u]: [item_ids[r] for r in rng.choice(near[u][near[u] >= 0], config.history, replace=False)]
        for u in range(config.users)
    }
    (staging / "user_history.json").write_text(json.dumps(history))
    with (staging / "items.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "title", "genres"])
        writer.writerows((item_id, f"Synthetic item {item_id}", "") for item_id in item_ids)
    manifest = {
        "data": {"source": "synthetic", "counts": {"items": config.items, "users": config.users}},
        "params": {k: v for k, v in asdict(config).items() if k != "out"},
        "metrics": {"index": index_info},
        "features": {
            "user": list(rf.USER_FEATURES),
            "item": list(rf.ITEM_FEATURES),
            "ranker": list(rf.RANKER_FEATURES),
        },
        "embedding_dim": config.dim,
        "training": {"seconds": round(time.perf_counter() - started, 1)},
    }
    result = publish(config.out, staging, version, manifest)
    _say(f"version {version} in {time.perf_counter() - started:.0f} s: index {index_info}")
    return result
