"""A synthetic catalogue at any scale (1M items and more) that the same services load, written through
the same export as `recsys train`: every source of the default pipeline (item-item tables with
`neighbours` links per item, ALS-like clustered vectors in an ANN index tuned to a recall target against
exact search, content vectors over synthetic genres, popularity with Zipf counts, co-activity units),
feature rows in the real schema, user histories, and a ranker trained on the pipeline's own candidates
and features with synthetic relevance. For performance work, not for quality numbers.

    recsys synth --items 1000000 --users 20000 --out artifacts-1m
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactVersion
from services.common.content_space import ContentSpace
from services.common.fusion import FusionParams
from services.common.ranker_features import ITEM_FEATURES, USER_FEATURES
from services.common.sources import source_class
from services.common.sources.base import History, Source
from services.common.sources.content import Content
from services.common.sources.popularity import Popularity
from services.common.sources.tables import NeighbourTable, TableSource
from services.trainer import ranker
from services.trainer.data import Log, Tags
from services.trainer.export import export
from services.trainer.pipeline import Fitted, PipelineConfig, Stage
from services.trainer.ranker import Groups, RankerParams
from services.trainer.universe import Universe

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
GENRES = 20


@dataclass(frozen=True)
class SyntheticConfig:
    out: Path
    items: int = 1_000_000
    users: int = 20_000
    dim: int = 64
    clusters: int = 256
    history: int = 50  # items per user history
    neighbours: int = 20  # links per item in every item-item table
    trees: int = 300  # in all, over the ranker's seeded models
    candidates: int = FusionParams().candidates  # fused candidates per request, as the default pipeline
    recall_target: float = 0.95
    seed: int = 7
    threads: int = 2

    def validate(self) -> None:
        for name, low in (
            ("items", 1000),
            ("users", 10),
            ("dim", 2),
            ("clusters", 1),
            ("trees", 3),
            ("neighbours", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: must be at least {low}, got {getattr(self, name)}")
        if not 1 <= self.candidates <= min(2000, self.items):
            raise ValueError(f"candidates: must be in 1..min(2000, items), got {self.candidates}")
        if not 0 < self.recall_target <= 1:
            raise ValueError(f"recall_target: must be in (0, 1], got {self.recall_target}")


def _say(message: str) -> None:
    print(f"synth: {message}", file=sys.stderr, flush=True)


def _clustered(rng: np.random.Generator, centers: F32, count: int, spread: float) -> tuple[F32, I64]:
    cluster = rng.integers(0, centers.shape[0], count)
    vectors = np.empty((count, centers.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):  # bounded temporaries at 1M+
        end = min(count, start + 100_000)
        noise = rng.standard_normal((end - start, centers.shape[1]), dtype=np.float32) * spread
        block = centers[cluster[start:end]] + noise
        vectors[start:end] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors, cluster


def cluster_table(rng: np.random.Generator, cluster: I64, keep: int) -> NeighbourTable:
    """`keep` random links per item into its own cluster, random weights: the shape, not the meaning, of
    a fitted item-item table (what a query costs at this catalogue size)."""
    order = np.argsort(cluster, kind="stable")
    sizes = np.bincount(cluster)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    picks = starts[cluster][:, None] + (rng.random((len(cluster), keep)) * sizes[cluster][:, None]).astype(
        np.int64
    )
    indptr = np.arange(0, (len(cluster) + 1) * keep, keep, dtype=np.int64)
    weights = rng.random(picks.size, dtype=np.float32)
    return NeighbourTable(indptr, order[picks].reshape(-1).astype(np.int32), weights, len(cluster))


def synthetic_sources(
    rng: np.random.Generator,
    config: SyntheticConfig,
    pipeline: PipelineConfig,
    item_vectors: F32,
    item_cluster: I64,
    genres: F32,
    counts: npt.NDArray[np.float64],
    histories: list[History],
    user_ids: list[str],
) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    for name in pipeline.sources:
        kind = source_class(name)
        params = pipeline.params(name)
        _say(f"source {name}")
        if issubclass(kind, TableSource):
            sources[name] = kind(params, cluster_table(rng, item_cluster, config.neighbours))
        elif kind is Content:
            sources[name] = Content.indexed(
                params, genres, histories, params.index, config.recall_target, config.seed
            )
        elif kind is Popularity:
            sources[name] = Popularity(params, counts.astype(np.float32))
        else:  # an embedding source: the clustered vectors
            sources[name] = kind.indexed(  # type: ignore[attr-defined]
                params, item_vectors, histories, params.index, config.recall_target, config.seed
            )
    return sources


def generate(config: SyntheticConfig) -> ArtifactVersion:
    import faiss

    config.validate()
    faiss.omp_set_num_threads(config.threads)
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    models = RankerParams().seeds
    pipeline = dataclasses.replace(
        PipelineConfig(seed=config.seed, threads=config.threads),
        fusion=dataclasses.replace(FusionParams(), candidates=config.candidates),
        ranker=dataclasses.replace(
            RankerParams(), rounds=max(1, config.trees // models), min_data_in_leaf=20
        ),
    )
    pipeline = pipeline.with_setting("als.factors", str(config.dim))
    _say(f"{config.items:,} items, {config.users:,} users, dim {config.dim}")
    centers = rng.standard_normal((config.clusters, config.dim), dtype=np.float32)
    items, item_cluster = _clustered(rng, centers, config.items, spread=0.6)
    _, user_cluster = _clustered(rng, centers, config.users, spread=0.4)
    item_ids = [f"i{i}" for i in range(config.items)]
    user_ids = [f"u{u}" for u in range(config.users)]
    genres = np.zeros((config.items, GENRES), dtype=np.float32)
    genres[np.arange(config.items), item_cluster % GENRES] = 1.0
    second = rng.integers(0, GENRES, config.items)
    genres[np.arange(config.items), second] = 1.0
    genres /= np.linalg.norm(genres, axis=1, keepdims=True)
    # Zipf popularity; histories drawn from the items of the user's cluster
    counts = np.floor(1e5 / np.arange(1, config.items + 1) ** 1.1)[rng.permutation(config.items)]
    by_cluster = np.argsort(item_cluster, kind="stable")
    sizes = np.bincount(item_cluster, minlength=config.clusters)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    histories: list[History] = []
    for u in range(config.users):
        c = user_cluster[u]
        picks = offsets[c] + rng.choice(sizes[c], min(config.history, sizes[c]), replace=False)
        histories.append(History.of(by_cluster[picks]))
    genre_names = [f"genre{g}" for g in range(GENRES)]
    universe = Universe(
        item_ids,
        user_ids,
        {v: i for i, v in enumerate(item_ids)},
        {u: i for i, u in enumerate(user_ids)},
        genres,
        np.full(config.items, np.nan),
        np.full(config.users, np.nan),
        np.full(config.users, np.nan),
        np.full(config.users, np.nan),
        Tags.empty(),
        Log.empty(),
        frozenset(),
        [f"Synthetic item {i}" for i in item_ids],
        genre_names,
    )
    sources = synthetic_sources(
        rng, config, pipeline, items, item_cluster, genres, counts, histories, user_ids
    )
    item_rows = rng.standard_normal((config.items, len(ITEM_FEATURES)), dtype=np.float32)
    item_rows[:, ITEM_FEATURES.index("item_log_pop")] = np.log1p(counts / counts.sum() * 1e4)
    user_rows = rng.standard_normal((config.users, len(USER_FEATURES)), dtype=np.float32)
    stage = Stage(
        universe,
        sources,
        item_rows,
        user_rows,
        {u: h for u, h in zip(user_ids, histories, strict=True)},
        ContentSpace(tuple(genre_names), (), ()),  # genres alone: no tags
    )

    _say(f"training the ranker ({models} x {pipeline.ranker.rounds} trees) on the pipeline's own candidates")
    parts: list[tuple[F32, npt.NDArray[np.float64]]] = []
    for u in rng.choice(config.users, min(200, config.users), replace=False):
        cand = stage.candidates(user_ids[u], pipeline)
        affinity = (
            np.nan_to_num(cand.columns["als"].scores) + rng.normal(0, 0.05, len(cand))
            if "als" in cand.columns
            else rng.random(len(cand))
        )
        labels = (affinity >= np.quantile(affinity, 0.9)).astype(np.float64)
        parts.append((stage.features(user_ids[u], cand, pipeline), labels))
    ensemble = ranker.train(
        Groups.stack(parts, len(pipeline.feature_names)),
        pipeline.feature_names,
        pipeline.ranker,
        config.seed,
        config.threads,
    )
    _say("writing the artifact version")
    manifest: dict[str, Any] = {
        "data": {"source": "synthetic", "counts": {"items": config.items, "users": config.users}},
        "synthetic": {k: v for k, v in dataclasses.asdict(config).items() if k != "out"},
        "metrics": {},
        "training": {"seconds": round(time.perf_counter() - started, 1)},
    }
    result = export(config.out, Fitted(pipeline, stage, ensemble, {"groups": len(parts)}), manifest)
    _say(f"version {result.version} in {time.perf_counter() - started:.0f} s")
    return result
