"""The training job: split by time, learn embeddings, fit the LambdaRank ranker, evaluate, export.

    log ──time──▶ train | test                 (test: the last `test_fraction` of interactions)
    train ─time─▶ ... | label 3 | label 2 | label 1   (`ranker_windows` windows of `label_fraction`)

Stage A (ranker): for each label window, ALS, features and candidates from everything before it, and
labels (graded by rating) from the window; early stopping on a held-out share of the user groups. Stage B (served version): ALS, features and the FAISS index from
the whole of `train`; retrieval alone vs retrieval + ranking evaluated on `test`. The test slice is
never used for fitting or model selection.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from services.common import ranking_features as rf
from services.common.artifacts import ArtifactVersion, new_version_name, publish, staging_dir
from services.trainer import features
from services.trainer import sources as S
from services.trainer.data import DataError, Dataset, Log, load, time_split
from services.trainer.embeddings import AlsParams, Embeddings, fit_als
from services.trainer.metrics import mean_metrics, recall_at_k
from services.trainer.ranker_params import lightgbm_params
from services.trainer.splits import leave_last_n

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
K = 10
T = TypeVar("T")
PROTOCOLS = ("time", "leave-last")


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    embedding_dim: int = 64
    als_iterations: int = 15
    als_regularization: float = 0.05
    als_alpha: float = 2.0
    sequence_window: int = 5
    sequence_neighbours: int = 50
    candidates: int = 300
    # "time": the latest test_fraction of all interactions is the test slice (no future leaks into
    # training; on MovieLens few users are active on both sides); "leave-last": each user's latest
    # leave_n interactions (every user with more than leave_n is evaluated)
    protocol: str = "time"
    test_fraction: float = 0.2
    leave_n: int = 1
    label_fraction: float = 0.1
    ranker_windows: int = 3
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 50
    max_rounds: int = 300
    early_stopping_rounds: int = 30
    validation_fraction: float = 0.2
    seed: int = 42
    threads: int = 2
    progress: bool = True

    def validate(self) -> None:
        checks = {
            "embedding_dim": self.embedding_dim >= 2,
            "als_iterations": self.als_iterations >= 1,
            "als_regularization": self.als_regularization >= 0,
            "als_alpha": self.als_alpha >= 0,
            "sequence_window": self.sequence_window >= 1,
            "sequence_neighbours": self.sequence_neighbours >= 0,
            "candidates": 10 <= self.candidates <= 10000,
            "protocol": self.protocol in PROTOCOLS,
            "test_fraction": 0 < self.test_fraction < 1,
            "leave_n": self.leave_n >= 1,
            "label_fraction": 0 < self.label_fraction < 1,
            "ranker_windows": self.ranker_windows >= 1,
            "learning_rate": self.learning_rate > 0,
            "num_leaves": self.num_leaves >= 2,
            "min_data_in_leaf": self.min_data_in_leaf >= 1,
            "max_rounds": self.max_rounds >= 1,
            "early_stopping_rounds": self.early_stopping_rounds >= 1,
            "validation_fraction": 0 < self.validation_fraction < 1,
            "threads": self.threads >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training parameter {bad[0]}={getattr(self, bad[0])!r}")

    def als(self) -> AlsParams:
        return AlsParams(
            factors=self.embedding_dim,
            iterations=self.als_iterations,
            regularization=self.als_regularization,
            alpha=self.als_alpha,
            threads=self.threads,
            seed=self.seed,
        )

    def lgb_params(self) -> dict[str, Any]:
        return lightgbm_params(
            objective="lambdarank",
            eval_at=K,
            truncation_level=2 * K,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_data_in_leaf=self.min_data_in_leaf,
            threads=self.threads,
            seed=self.seed,
        )


class Stages:
    """Wall-clock time per named stage; with `progress`, one line on stderr as each ends."""

    NAMES = ("load", "ranker", "serving_snapshot", "evaluate", "export")

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        log.info("stage done", extra={"stage": name, "seconds": self.seconds[name]})
        if self.progress:
            step = self.NAMES.index(name) + 1
            print(f"train [{step}/{len(self.NAMES)}] {name:<17} {self.seconds[name]:6.1f} s", file=sys.stderr)


@dataclass
class Snapshot:
    """What serving would hold after training on one slice of the log."""

    item_ids: list[str]
    item_row: dict[str, int]
    embeddings: Embeddings
    user_row: dict[str, int]
    item_features: F32
    user_features: F32
    history: dict[str, list[int]]  # user -> item rows, most recent first
    index: Any  # faiss.IndexFlatIP over item vectors, ids = rows
    neighbours: rf.ItemNeighbours


def _bar(items: Iterable[T], desc: str, progress: bool) -> Iterable[T]:
    """A transient progress bar, only on a terminal: in a log file its redraws would be noise (the
    stage lines of `Stages` still show progress there)."""
    return tqdm(items, desc=desc, disable=None if progress else True, leave=False)


def sequence_neighbours(log_slice: Log, item_ids: list[str], window: int, keep: int) -> rf.ItemNeighbours:
    """Each item's `keep` strongest sequence neighbours in the slice (`sources.sequence_weights`: pairs
    rated within `window` positions by one user, popularity-normalised); keep 0 switches the
    recent_sequence feature off (no neighbours: it is 0 for every candidate)."""
    x = S.Interactions.build(log_slice, sorted(set(log_slice.users.tolist())), item_ids)
    weights = S.sequence_weights(x, log_slice, window).tocsr()
    per_row = np.diff(weights.indptr)
    rows = np.repeat(np.arange(len(item_ids)), per_row)
    # Within each row, strongest first (lexsort is stable: ties keep column order); keep the first `keep`.
    order = np.lexsort((-weights.data, rows))
    kept = order[np.arange(order.size) - weights.indptr[rows[order]] < keep]
    indptr = np.concatenate([[0], np.cumsum(np.minimum(per_row, keep))]).astype(np.int64)
    return rf.ItemNeighbours(
        indptr, weights.indices[kept].astype(np.int32), weights.data[kept].astype(np.float32)
    )


def build_snapshot(
    data: Dataset, log_slice: Log, item_ids: list[str], reference: float, config: TrainConfig
) -> Snapshot:
    import faiss

    item_row = {item: i for i, item in enumerate(item_ids)}
    emb = fit_als(log_slice, item_ids, config.als(), show_progress=False)
    tags = data.tags.known_to(log_slice, data.rated_pairs()) if len(data.tags) else data.tags
    items = features.item_features(log_slice, item_ids, data.catalog, reference, tags)
    users = features.user_features(log_slice, emb.user_ids, item_ids, items, reference)
    history: dict[str, list[int]] = {}
    for user, item in zip(log_slice.users[::-1].tolist(), log_slice.items[::-1].tolist(), strict=True):
        history.setdefault(user, []).append(item_row[item])
    index = faiss.IndexFlatIP(emb.item_vectors.shape[1])
    index.add(emb.item_vectors)
    neighbours = sequence_neighbours(log_slice, item_ids, config.sequence_window, config.sequence_neighbours)
    return Snapshot(
        item_ids,
        item_row,
        emb,
        {u: i for i, u in enumerate(emb.user_ids)},
        items,
        users,
        history,
        index,
        neighbours,
    )


def retrieve(snap: Snapshot, users: Sequence[str], n: int, progress: bool) -> dict[str, tuple[I64, F32]]:
    """Top-n items by inner product per user, excluding the items the user has seen."""
    out: dict[str, tuple[I64, F32]] = {}
    batch = 256
    for start in _bar(range(0, len(users), batch), "retrieve", progress):
        chunk = list(users[start : start + batch])
        seen = [np.unique(np.asarray(snap.history.get(u, []), dtype=np.int64)) for u in chunk]
        k = min(snap.index.ntotal, n + max(len(s) for s in seen))
        vectors = snap.embeddings.user_vectors[[snap.user_row[u] for u in chunk]]
        scores, rows = snap.index.search(np.ascontiguousarray(vectors), k)
        for i, user in enumerate(chunk):
            keep = (rows[i] >= 0) & ~np.isin(rows[i], seen[i])
            out[user] = (rows[i][keep][:n].astype(np.int64), scores[i][keep][:n].astype(np.float32))
    return out


def ranker_inputs(snap: Snapshot, user: str, rows: I64, scores: F32) -> F32:
    """The ranker matrix for one user's candidates, through the shared serve-time assembly."""
    vectors = snap.embeddings.item_vectors
    recent_rows = snap.history.get(user, [])[: rf.RECENT_ITEMS]
    recent = rf.recent_profile(vectors[recent_rows], vectors.shape[1])
    return rf.assemble(
        snap.user_features[snap.user_row[user]],
        snap.item_features[rows],
        scores,
        candidate_embeddings=vectors[rows],
        recent=recent,
        recent_sequence=snap.neighbours.scores(recent_rows, rows),
    )


@dataclass(frozen=True)
class Window:
    """One ranker training window: the history `fit` and the labels. "time": labels in [start, end);
    "leave-last": `start` is the history's latest interaction, the reference of its snapshot."""

    fit: Log
    label: Log
    start: float
    end: float


def label_windows(train_log: Log, config: TrainConfig) -> list[Window]:
    """`ranker_windows` label windows cut from the end of train the way the test slice is cut, latest
    first; each window's history is what remains before it.

    "time": consecutive windows each holding `label_fraction` of train's interactions. "leave-last":
    each user's latest `leave_n` remaining interactions, so the ranker learns on users at the point of
    their own history where it is evaluated (a global time window would teach it only about the users
    active at the end of the log)."""
    size = max(1, round(len(train_log) * config.label_fraction))
    windows: list[Window] = []
    rest, end = train_log, float("inf")
    for _ in range(config.ranker_windows):
        if config.protocol == "time":
            if len(rest) <= size:
                break
            rest, label, start = time_split(rest, size / len(rest))
        else:
            rest, label = leave_last_n(rest, config.leave_n, config.seed)
            if len(label) == 0:
                break
            start = float(rest.timestamps.max())
        windows.append(Window(rest, label, start, end))
        end = start
    if not windows:
        raise DataError(f"too few interactions ({len(train_log)}) in the training slice for a label window")
    return windows


def split_summary(windows: list[Window], reference: float, config: TrainConfig) -> dict[str, Any]:
    """The manifest's account of the split. "time": the test slice's start and each label window's
    [start, end). "leave-last" has no global windows (each user's are their own latest interactions):
    the snapshot's reference time and each window's interactions and users instead."""
    if config.protocol == "time":
        return {
            "strategy": "time",
            "test_fraction": config.test_fraction,
            "label_fraction": config.label_fraction,
            "test_start": reference,
            "label_windows": [
                {
                    "start": w.start,
                    "end": w.end if w.end != float("inf") else reference,
                    "interactions": len(w.label),
                }
                for w in windows
            ],
        }
    return {
        "strategy": "leave-last",
        "leave_n": config.leave_n,
        "reference": reference,
        "label_windows": [
            {"interactions": len(w.label), "users": len(set(w.label.users.tolist()))} for w in windows
        ],
    }


def window_groups(
    data: Dataset, window: Window, item_ids: list[str], config: TrainConfig
) -> tuple[list[F32], list[npt.NDArray[np.float64]]]:
    """Ranker rows and graded labels, one group per user with a labelled item among its candidates."""
    snap = build_snapshot(data, window.fit, item_ids, window.start, config)
    grades: dict[str, dict[int, float]] = {}
    for user, item, rating in zip(
        window.label.users.tolist(), window.label.items.tolist(), window.label.ratings.tolist(), strict=True
    ):
        if user in snap.user_row:
            grade = 2.0 if rating >= 4.0 else 1.0
            row = snap.item_row[item]
            user_grades = grades.setdefault(user, {})
            user_grades[row] = max(grade, user_grades.get(row, 0.0))
    users = sorted(grades)
    candidates = retrieve(snap, users, config.candidates, config.progress)
    blocks: list[F32] = []
    labels: list[npt.NDArray[np.float64]] = []
    for user in _bar(users, "ranker features", config.progress):
        rows, scores = candidates[user]
        y = np.array([grades[user].get(int(r), 0.0) for r in rows], dtype=np.float64)
        if y.sum() == 0 or len(rows) < 2:
            continue  # a group without positives teaches LambdaRank nothing
        blocks.append(ranker_inputs(snap, user, rows, scores))
        labels.append(y)
    return blocks, labels


def fit_ranker(
    data: Dataset, windows: list[Window], item_ids: list[str], config: TrainConfig
) -> tuple[Any, dict[str, Any]]:
    """Stage A: a LambdaRank model on candidates from each window's history, labelled by the window."""
    import lightgbm as lgb

    blocks: list[F32] = []
    labels: list[npt.NDArray[np.float64]] = []
    for window in windows:
        window_blocks, window_labels = window_groups(data, window, item_ids, config)
        blocks += window_blocks
        labels += window_labels
    if len(blocks) < 4:
        raise DataError(
            f"only {len(blocks)} users have a label-window item among their candidates: too few to "
            "train the ranker"
        )
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(blocks))
    n_valid = max(1, round(len(order) * config.validation_fraction))
    valid, fit = np.sort(order[:n_valid]), np.sort(order[n_valid:])

    def dataset(idx: npt.NDArray[np.int64]) -> Any:
        return lgb.Dataset(
            np.vstack([blocks[i] for i in idx]),
            label=np.concatenate([labels[i] for i in idx]),
            group=[len(labels[i]) for i in idx],
            feature_name=list(rf.RANKER_FEATURES),
            free_raw_data=False,
        )

    params = config.lgb_params()
    booster = lgb.train(
        params,
        dataset(fit),
        num_boost_round=config.max_rounds,
        valid_sets=[dataset(valid)],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )
    best = max(1, int(booster.best_iteration or config.max_rounds))
    valid_ndcg = float(booster.best_score["valid"][f"ndcg@{K}"])
    # Refit on every group with the chosen number of rounds: the label windows are small.
    final = lgb.train(params, dataset(np.arange(len(blocks))), num_boost_round=best)
    info = {
        "best_iteration": best,
        "validation_ndcg@10": round(valid_ndcg, 6),
        "groups": len(blocks),
        "rows": int(sum(len(y) for y in labels)),
    }
    return final, info


def evaluate(snap: Snapshot, test_log: Log, booster: Any, config: TrainConfig) -> dict[str, dict[str, float]]:
    """Retrieval order vs ranker order of the same candidates on the test slice."""
    relevant: dict[str, set[str]] = {}
    for user, item in zip(test_log.users.tolist(), test_log.items.tolist(), strict=True):
        if user in snap.user_row:
            relevant.setdefault(user, set()).add(item)
    for user, items in relevant.items():
        seen = {snap.item_ids[r] for r in snap.history.get(user, [])}
        items -= seen
    users = sorted(u for u, items in relevant.items() if items)
    candidates = retrieve(snap, users, config.candidates, config.progress)
    retrieval: dict[str, list[str]] = {}
    ranking: dict[str, list[str]] = {}
    candidate_recall: list[float] = []
    for user in _bar(users, "evaluate", config.progress):
        rows, scores = candidates[user]
        ids = [snap.item_ids[r] for r in rows]
        retrieval[user] = ids
        predicted = booster.predict(ranker_inputs(snap, user, rows, scores), num_threads=config.threads)
        order = np.argsort(-predicted, kind="stable")
        ranking[user] = [ids[i] for i in order]
        candidate_recall.append(recall_at_k(ids, relevant[user], max(len(ids), 1)))
    # Baseline: the most popular items of the training slice the user has not seen.
    counts = np.zeros(len(snap.item_ids))
    for rows_seen in snap.history.values():
        np.add.at(counts, np.asarray(rows_seen, dtype=np.int64), 1.0)
    by_popularity = np.argsort(-counts, kind="stable")
    popular: dict[str, list[str]] = {}
    for user in users:
        seen_rows = set(snap.history.get(user, []))
        popular[user] = [snap.item_ids[r] for r in by_popularity[: K + len(seen_rows)] if r not in seen_rows][
            :K
        ]
    return {
        "popularity": _rounded(mean_metrics(popular, relevant, K)),
        "retrieval": _rounded(mean_metrics(retrieval, relevant, K)),
        "ranking": _rounded(mean_metrics(ranking, relevant, K)),
        "candidates": {
            f"recall@{config.candidates}": round(float(np.mean(candidate_recall)) if users else 0.0, 6)
        },
        "evaluation": {"users": len(users), "k": K},
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in values.items()}


def catalogue_ids(data: Dataset) -> list[str]:
    return list(data.catalog)


def write_files(staging: Path, data: Dataset, snap: Snapshot, booster: Any, train_log: Log) -> None:
    import faiss

    def dump(name: str, value: Any) -> None:
        (staging / name).write_text(json.dumps(value, ensure_ascii=False) + "\n")

    dump("item_ids.json", snap.item_ids)
    dump("user_ids.json", snap.embeddings.user_ids)
    with (staging / "items.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "title", "genres"])
        for item in snap.item_ids:
            meta = data.catalog[item]
            writer.writerow([item, meta.title, "|".join(meta.genres)])
    np.save(staging / "item_embeddings.npy", snap.embeddings.item_vectors.astype(np.float32))
    np.save(staging / "user_embeddings.npy", snap.embeddings.user_vectors.astype(np.float32))
    np.save(staging / "item_features.npy", snap.item_features.astype(np.float32))
    np.save(staging / "user_features.npy", snap.user_features.astype(np.float32))
    faiss.write_index(snap.index, str(staging / "item_index.faiss"))
    snap.neighbours.save(staging / rf.NEIGHBOURS_FILE)
    counts = np.bincount(
        np.fromiter((snap.item_row[i] for i in train_log.items.tolist()), np.int64, len(train_log)),
        minlength=len(snap.item_ids),
    )
    popular = [snap.item_ids[i] for i in np.lexsort((np.arange(len(counts)), -counts)) if counts[i] > 0]
    dump("popular.json", popular)
    dump(
        "user_history.json",
        {u: [snap.item_ids[r] for r in snap.history[u]] for u in snap.embeddings.user_ids},
    )
    booster.save_model(str(staging / "ranker.txt"))


def holdout(log: Log, config: TrainConfig) -> tuple[Log, Log, float]:
    """(train, test, reference) by `config.protocol`. The reference time, from which the serving
    snapshot's ages and decayed popularity are measured, is the test slice's start under "time" and
    the latest training interaction under "leave-last"."""
    if config.protocol == "time":
        return time_split(log, config.test_fraction)
    train_log, test_log = leave_last_n(log, config.leave_n, config.seed)
    if len(test_log) == 0:
        raise DataError(f"no user has more than {config.leave_n} interactions to leave out")
    return train_log, test_log, float(train_log.timestamps.max())


def train(config: TrainConfig) -> ArtifactVersion:
    """Run the whole job and publish a new artifact version (CURRENT points at it)."""
    import faiss

    config.validate()
    faiss.omp_set_num_threads(config.threads)
    stages = Stages(config.progress)
    started = time.perf_counter()
    with stages("load"):
        data = load(config.data)
        train_log, test_log, test_start = holdout(data.log, config)
        windows = label_windows(train_log, config)
        item_ids = catalogue_ids(data)
    with stages("ranker"):
        booster_a, ranker_info = fit_ranker(data, windows, item_ids, config)
    with stages("serving_snapshot"):
        snap = build_snapshot(data, train_log, item_ids, test_start, config)
    with stages("evaluate"):
        metrics = evaluate(snap, test_log, booster_a, config)
    metrics["ranker_validation"] = {"ndcg@10": ranker_info["validation_ndcg@10"]}

    version = new_version_name()
    config.out.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(config.out, version)
    try:
        with stages("export"):
            write_files(staging, data, snap, booster_a, train_log)
            manifest: dict[str, Any] = {
                "data": {
                    "source": data.source,
                    "fingerprint": data.fingerprint,
                    "files": data.files,
                    "counts": {
                        "interactions": len(data.log),
                        "users": len(set(data.log.users.tolist())),
                        "items": len(item_ids),
                        "train": len(train_log),
                        "test": len(test_log),
                        "ranker_label": sum(len(w.label) for w in windows),
                        "train_users": len(snap.embeddings.user_ids),
                    },
                    "split": {
                        **split_summary(windows, test_start, config),
                        "first": float(data.log.timestamps[0]),
                        "last": float(data.log.timestamps[-1]),
                    },
                },
                "params": {
                    **{k: v for k, v in asdict(config).items() if k not in ("data", "out", "progress")},
                    "ranker": {**config.lgb_params(), **ranker_info},
                    "recent_items": rf.RECENT_ITEMS,
                },
                "metrics": metrics,
                "features": {
                    "user": list(rf.USER_FEATURES),
                    "item": list(rf.ITEM_FEATURES),
                    "ranker": list(rf.RANKER_FEATURES),
                },
                "embedding_dim": int(snap.embeddings.item_vectors.shape[1]),
                "training": {"seconds": round(time.perf_counter() - started, 3), "stages": stages.seconds},
            }
            result = publish(config.out, staging, version, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("trained", extra={"version": version, "seconds": manifest["training"]["seconds"]})
    return result
