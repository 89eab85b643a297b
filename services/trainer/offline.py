"""Offline evaluation of the two-stage recommender on a benchmark protocol (`recsys evaluate`).

For one (train, test) split:

    train ──K folds stratified by item (`stratified_folds`, K = ranker_folds = 5)──▶ fold 1 .. fold K
    Stage A  for each fold f: sources fitted on the other K-1 folds (60% of the log, close to the 75%
             of stage B) → candidates → features; labels = fold-f membership; all folds' groups pooled
             → LightGBM ranker, XE-NDCG objective (a fixed 150 rounds chosen on the validation protocol, never on test)
    Stage B  sources refitted on all of train → candidates → features → the stage-A ranker → top k
    Test     only users in train and test; every test interaction is relevant; train items removed.

Candidate sources (services.trainer.sources): EASE, item-item co-occurrence, RP3beta, sequence neighbours,
sequence EASE, ALS, BPR, content (genres and tags) and popularity. Retrieval merges EASE, co-occurrence,
ALS and sequence neighbours (`OfflineConfig.fused`) by reciprocal-rank fusion and keeps the top
`candidates`; every source's score and rank become ranker features, with user, item, context
(time of day, recency) and cross features. Hyper-parameters are fixed in `OfflineConfig` a priori (the
BPR/EASE settings were compared on the inner split of seed 42, ALS's on the validation holdouts of three
trains with bench/sources_alone.py; never on a test split).

Offline-only: the multi-source candidates and their features exist here, not in the served path (the
served ranker uses services.common.ranking_features over ALS/FAISS candidates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.trainer import sources as S
from services.trainer.data import Dataset, Log, Tags
from services.trainer.metrics import coverage, intra_list_diversity, mean_metrics, popularity_bias
from services.trainer.ranker_params import lightgbm_params
from services.trainer.splits import leave_last_n, stratified_folds, stratified_split, time_split

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
DAY = 86400.0
K = 10
KS = (1, 3, 5, 10, 20, 50)
FUNNEL_KS = (10, 50, 100, 200, 500)
FUSED = ("ease", "cooc", "als", "seq")
SOURCES = ("ease", "cooc", "rp3", "seq", "seqease", "als", "bpr", "content", "pop")


@dataclass(frozen=True)
class OfflineConfig:
    protocol: str = "stratified"  # stratified | time | leave-last
    ratio: float = 0.75  # train share (stratified), 1 - test share (time)
    leave_n: int = 1
    inner_ratio: float = 0.75  # stage A: share of train the sources are fitted on (rest labels the ranker)
    inner_folds: int = 2  # stage A: independent inner splits (seeds) whose groups are pooled
    # stage A by K-fold stacking (>= 2): sources fitted on K-1 folds of train, labels from the K-th;
    # 0 or 1 falls back to the `inner_folds` inner splits above
    ranker_folds: int = 5
    # K-fold stacking repeated with other fold seeds: each train row labels `ranker_fold_repeats` groups,
    # scored by sources fitted on different neighbours (chosen on the validation protocol)
    ranker_fold_repeats: int = 2
    ease_lambda: float = 700.0  # best of 100..1000 for EASE alone on the inner split of seed 42
    # ALS alone on the validation holdouts of three trains (inner seed 9999): λ 40 scored 0.0895 MAP
    # against 0.0762 at the earlier λ 0.1 (EASE 0.0834); the best λ is about 8 times alpha at any factors
    als_factors: int = 128
    als_alpha: float = 5.0
    als_regularization: float = 40.0
    als_iterations: int = 15
    bpr_factors: int = 64
    bpr_learning_rate: float = 0.01
    bpr_regularization: float = 0.001
    bpr_iterations: int = 100
    cooc_neighbours: int = 200
    rp3_alpha: float = 1.0
    rp3_beta: float = 0.5
    seq_window: int = 5
    seq_alpha: float = 0.7
    seqease_window: int = 20
    seqease_lambda: float = 200.0
    fused: tuple[str, ...] = FUSED  # the sources merged by reciprocal-rank fusion into the candidates
    fusion_k: float = 60.0
    candidates: int = 100
    recent_items: int = 10
    # ranker hyper-parameters chosen on the validation protocol (seed 42's train re-split with seed 9999,
    # K-fold stacking inside it; the test split never read): see docs/evaluation.md
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 200
    # LightGBM objective: "rank_xendcg" (listwise cross-entropy over the group), "lambdarank" or "binary"
    # (pointwise logloss). On the validation protocol over three trains (test never read) XE-NDCG beat
    # LambdaRank on two trains and tied on the third (mean MAP 0.0928 vs 0.0906) and trains in half the
    # time; see docs/evaluation.md. The served trainer (pipeline.py) keeps LambdaRank.
    objective: str = "rank_xendcg"
    # fixed 150 rounds on every group (chosen on the validation protocol); early stopping on 20% of the
    # groups when early_stopping_rounds > 0
    max_rounds: int = 150
    early_stopping_rounds: int = 0
    # LightGBM fits with different seeds (their row and feature bagging differ); a candidate list's score
    # sums the fits' per-list z-scores. Three beat one on 8 of the 9 validation splits (MAP +0.0007 ±
    # 0.0003); see docs/evaluation.md
    ranker_seeds: int = 3
    validation_fraction: float = 0.2
    mmr_lambdas: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.5)
    overlap_units: tuple[str, ...] = ("day", "week")  # time units of the temporal-overlap features
    threads: int = 2

    def __post_init__(self) -> None:
        if self.ranker_seeds < 1:
            raise ValueError(f"ranker_seeds must be >= 1, got {self.ranker_seeds}")

    @classmethod
    def parse_field(cls, name: str, raw: str) -> Any:
        """A field's value from text, as the field's type: a tuple field takes comma-separated items.
        Raises KeyError for an unknown field and ValueError for a value of the wrong type."""
        if name not in {f.name for f in fields(cls)}:
            raise KeyError(name)
        current = getattr(cls(), name)
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            return tuple(kind(v) for v in raw.split(",") if v)
        return type(current)(raw)

    def lgb_params(self, seed: int) -> dict[str, Any]:
        return lightgbm_params(
            objective=self.objective,
            eval_at=K,
            truncation_level=3 * K,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_data_in_leaf=self.min_data_in_leaf,
            threads=self.threads,
            seed=seed,
        )


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


# ---------------------------------------------------------------- context: everything fixed per split


@dataclass(frozen=True)
class Context:
    """Ids and static side information for one split (train users and items define the universe)."""

    user_ids: list[str]
    item_ids: list[str]
    genres: F32  # (items, genres) L2-normalised
    item_year: F64
    user_age: F64
    user_gender: F64  # 1 = M, 0 = F, NaN unknown
    user_occupation: F64  # category code, NaN unknown
    tags: Tags
    # every (user, item) of the dataset's log, held-out ratings included: only to leave their tags out
    rated: frozenset[tuple[str, str]]


def make_context(data: Dataset, train: Log) -> Context:
    user_ids = sorted(set(train.users.tolist()))
    item_ids = sorted(set(train.items.tolist()))
    _, genres = S.genre_vectors(item_ids, data.catalog)
    years = np.array([data.catalog[i].year if i in data.catalog else np.nan for i in item_ids])
    attrs = [data.user_attributes.get(u, {}) for u in user_ids]

    def number(raw: str | None) -> float:
        try:
            return float(raw) if raw else np.nan
        except ValueError:
            return np.nan

    occupations = sorted({a["occupation"] for a in attrs if a.get("occupation")})
    occ = {o: i for i, o in enumerate(occupations)}
    return Context(
        user_ids,
        item_ids,
        genres,
        years.astype(np.float64),
        np.array([number(a.get("age")) for a in attrs], dtype=np.float64),
        np.array(
            [1.0 if a.get("gender") == "M" else 0.0 if a.get("gender") == "F" else np.nan for a in attrs]
        ),
        np.array([float(occ[a["occupation"]]) if a.get("occupation") else np.nan for a in attrs]),
        data.tags,
        data.rated_pairs() if len(data.tags) else frozenset(),
    )


# ---------------------------------------------------------------- sources on one fitting slice


@dataclass
class Fitted:
    """All sources fitted on one slice of the log, with dense score and rank matrices."""

    x: S.Interactions
    scores: dict[str, F32]
    ranks: dict[str, F32]
    fused: F32
    fused_rank: F32
    cooc_sim: F32
    item_vectors: dict[str, F32]  # per embedding source, for the FAISS check
    user_vectors: dict[str, F32]
    seconds: dict[str, float] = field(default_factory=dict)


def fit_sources(ctx: Context, fit_log: Log, config: OfflineConfig, seed: int) -> Fitted:
    x = S.Interactions.build(fit_log, ctx.user_ids, ctx.item_ids)
    timer = Timer()
    scores: dict[str, F32] = {}
    with timer("pop"):
        scores["pop"] = S.popularity(x)
    with timer("ease"):
        b = S.ease_weights(x, config.ease_lambda)
        scores["ease"] = np.asarray(x.binary @ b, dtype=np.float32)
    with timer("cooc"):
        sim = S.cooccurrence_similarity(x, config.cooc_neighbours)
        scores["cooc"] = np.asarray(x.binary @ sim, dtype=np.float32)
    with timer("rp3"):
        scores["rp3"] = np.asarray(
            x.binary @ S.rp3beta_weights(x, config.rp3_alpha, config.rp3_beta), dtype=np.float32
        )
    with timer("seq"):
        scores["seq"] = S.sequence(x, fit_log, config.seq_window, config.seq_alpha)
    with timer("seqease"):
        scores["seqease"] = np.asarray(
            x.binary @ S.sequence_ease_weights(x, fit_log, config.seqease_window, config.seqease_lambda),
            dtype=np.float32,
        )
    with timer("als"):
        als = S.als(
            x,
            config.als_factors,
            config.als_regularization,
            config.als_alpha,
            config.als_iterations,
            seed,
            config.threads,
        )
        scores["als"] = als.scores()
    with timer("bpr"):
        bpr = S.bpr(
            x,
            config.bpr_factors,
            config.bpr_learning_rate,
            config.bpr_regularization,
            config.bpr_iterations,
            seed,
        )
        scores["bpr"] = bpr.scores()
    with timer("content"):
        tags = S.tag_vectors(ctx.item_ids, ctx.tags.known_to(fit_log, ctx.rated))
        scores["content"] = S.content(x, S.content_vectors(ctx.genres, tags))
    with timer("ranks"):
        ranks = {name: S.ranks(s, x.binary) for name, s in scores.items()}
        fused = np.zeros(x.shape, dtype=np.float32)
        for name in config.fused:
            fused += 1.0 / (config.fusion_k + ranks[name] + 1.0)
        fused_rank = S.ranks(fused, x.binary)
    dense = x.binary.toarray().astype(np.float32)
    return Fitted(
        x,
        scores,
        ranks,
        fused,
        fused_rank,
        sim,
        {"ease": b.T.copy(), "als": als.items, "bpr": bpr.items},
        {"ease": dense, "als": als.users, "bpr": bpr.users},
        timer.seconds,
    )


# ---------------------------------------------------------------- features


def _slice_stats(ctx: Context, fit_log: Log, x: S.Interactions) -> dict[str, F64]:
    """Per-item and per-user statistics of the fitting slice (nothing from later or from test)."""
    n_u, n_i = x.shape
    urow = np.fromiter((x.user_index[u] for u in fit_log.users.tolist()), np.int64, len(fit_log))
    icol = np.fromiter((x.item_index.get(i, -1) for i in fit_log.items.tolist()), np.int64, len(fit_log))
    keep = icol >= 0
    urow, icol = urow[keep], icol[keep]
    r = fit_log.ratings[keep].astype(np.float64)
    ts = fit_log.timestamps[keep]
    end = float(ts.max())
    hour = (ts % DAY) / 3600.0
    weekend = ((np.floor(ts / DAY) + 4) % 7 >= 5).astype(np.float64)  # 1970-01-01 was a Thursday

    def group(codes: I64, values: F64, n: int) -> tuple[F64, F64, F64]:
        count = np.bincount(codes, minlength=n).astype(np.float64)
        total = np.bincount(codes, weights=values, minlength=n)
        sq = np.bincount(codes, weights=values * values, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
            std = np.sqrt(np.maximum(np.where(count > 0, sq / count - mean * mean, np.nan), 0.0))
        return count, mean, std

    i_count, i_mean, i_std = group(icol, r, n_i)
    u_count, u_mean, u_std = group(urow, r, n_u)
    global_mean = float(r.mean())
    i_bayes = (np.bincount(icol, weights=r, minlength=n_i) + 10 * global_mean) / (i_count + 10)
    i_first = np.full(n_i, np.inf)
    i_last = np.full(n_i, -np.inf)
    np.minimum.at(i_first, icol, ts)
    np.maximum.at(i_last, icol, ts)
    u_first = np.full(n_u, np.inf)
    u_last = np.full(n_u, -np.inf)
    np.minimum.at(u_first, urow, ts)
    np.maximum.at(u_last, urow, ts)
    i_first[~np.isfinite(i_first)] = np.nan
    i_last[~np.isfinite(i_last)] = np.nan
    age = (end - ts) / DAY
    share = i_count / max(1.0, float(len(r)))
    i_logpop = np.log1p(share * 1e4)
    _, u_mean_pop, _ = group(urow, i_logpop[icol], n_u)
    years = ctx.item_year[icol]
    ok = np.isfinite(years)
    _, u_mean_year, _ = group(urow[ok], years[ok], n_u)
    _, i_hour, _ = group(icol, hour, n_i)
    _, u_hour, _ = group(urow, hour, n_u)
    _, u_weekend, _ = group(urow, weekend, n_u)
    rater_age = ctx.user_age[urow]
    ok = np.isfinite(rater_age)
    _, i_rater_age, _ = group(icol[ok], rater_age[ok], n_i)
    gender = ctx.user_gender[urow]
    ok = np.isfinite(gender)
    _, i_male, _ = group(icol[ok], gender[ok], n_i)
    return {
        "item_log_pop": i_logpop,
        "item_log_pop_30d": np.log1p(
            np.bincount(icol, weights=np.exp(-age / 30.0), minlength=n_i) / max(1.0, float(len(r))) * 1e4
        ),
        "item_mean_rating": i_mean,
        "item_bayes_rating": i_bayes,
        "item_std_rating": i_std,
        "item_days_since_first": (end - i_first) / DAY,
        "item_days_since_last": (end - i_last) / DAY,
        "item_year": ctx.item_year,
        "item_n_genres": (ctx.genres > 0).sum(axis=1).astype(np.float64),
        "item_mean_hour": i_hour,
        "item_rater_age": i_rater_age,
        "item_male_share": i_male,
        "user_log_count": np.log1p(u_count / max(1.0, float(u_count.mean()))),
        "user_mean_rating": u_mean,
        "user_std_rating": u_std,
        "user_days_active": (u_last - u_first) / DAY,
        "user_mean_item_pop": u_mean_pop,
        "user_mean_item_year": u_mean_year,
        "user_mean_hour": u_hour,
        "user_weekend_share": u_weekend,
        "user_age": ctx.user_age,
        "user_gender": ctx.user_gender,
        "user_occupation": ctx.user_occupation,
        "_user_last": u_last,
        "_item_last": i_last,
        "_user_first": u_first,
        "_item_first": i_first,
        "_item_count": i_count,
    }


def temporal_overlap(
    x: S.Interactions, fit_log: Log, stats: dict[str, F64], u: I64, i: I64, units: Sequence[str]
) -> list[F64]:
    """Context features from training timestamps only: how much of the item's activity falls where the
    user was active (within the user's first..last window, and in the same hours, days, weeks ...)."""
    urow = np.fromiter((x.user_index[v] for v in fit_log.users.tolist()), np.int64, len(fit_log))
    icol = np.fromiter((x.item_index.get(v, -1) for v in fit_log.items.tolist()), np.int64, len(fit_log))
    keep = icol >= 0
    urow, icol, ts = urow[keep], icol[keep], fit_log.timestamps[keep]
    seconds = {"hour": 3600.0, "day": DAY, "3day": 3 * DAY, "week": 7 * DAY, "month": 30 * DAY}
    count = np.maximum(stats["_item_count"], 1.0)
    out: list[F64] = []
    # within the user's window: per item, sorted rating times, counted by binary search per pair
    order = np.lexsort((ts, icol))
    sorted_items, sorted_ts = icol[order], ts[order]
    starts = np.searchsorted(sorted_items, np.arange(x.shape[1]), side="left")
    ends = np.searchsorted(sorted_items, np.arange(x.shape[1]), side="right")
    inside = np.zeros(u.shape[0], dtype=np.float64)
    pair_order = np.argsort(i, kind="stable")
    pair_items = i[pair_order]
    pair_starts = np.searchsorted(pair_items, np.arange(x.shape[1]), side="left")
    pair_ends = np.searchsorted(pair_items, np.arange(x.shape[1]), side="right")
    for item in np.unique(i):
        a, b = starts[item], ends[item]
        if a == b:
            continue
        pairs = pair_order[pair_starts[item] : pair_ends[item]]
        times = sorted_ts[a:b]
        inside[pairs] = np.searchsorted(times, stats["_user_last"][u[pairs]], side="right") - np.searchsorted(
            times, stats["_user_first"][u[pairs]], side="left"
        )
    out.append(inside / count[i])
    for name in units:
        unit = np.floor((ts - ts.min()) / seconds[name]).astype(np.int64)
        n_units = int(unit.max()) + 1
        user_units = sp.csr_matrix(
            (np.ones(urow.shape[0], dtype=np.float32), (urow, unit)), shape=(x.shape[0], n_units)
        )
        user_units.data[:] = 1.0
        user_units.sum_duplicates()
        user_units.data[:] = 1.0
        item_units = sp.csr_matrix(
            (np.ones(icol.shape[0], dtype=np.float32), (icol, unit)), shape=(x.shape[1], n_units)
        )
        overlap = np.asarray((user_units @ item_units.T).toarray(), dtype=np.float64)[u, i]
        out.append(overlap / count[i])
    return out


def recent_matrix(fit_log: Log, x: S.Interactions, n: int) -> sp.csr_matrix:
    """(users, items) 1/n for each of the user's n latest items in the slice."""
    rows: list[int] = []
    cols: list[int] = []
    taken: dict[int, int] = {}
    for u, i in zip(fit_log.users[::-1].tolist(), fit_log.items[::-1].tolist(), strict=True):
        r = x.user_index[u]
        c = x.item_index.get(i)
        if c is None or taken.get(r, 0) >= n:
            continue
        taken[r] = taken.get(r, 0) + 1
        rows.append(r)
        cols.append(c)
    return sp.csr_matrix(
        (np.full(len(rows), 1.0 / n, dtype=np.float32), (rows, cols)), shape=x.shape, dtype=np.float32
    )


def feature_names(units: Sequence[str] = OfflineConfig.overlap_units) -> list[str]:
    names: list[str] = []
    # Raw source scores change scale between the inner train (stage A) and the full train (stage B):
    # only scale-free views of them are features (rank, score / the user's best score, and the score's
    # z-score within the user's candidate list, which is per-user normalised in both stages).
    for s in SOURCES:
        names += [f"{s}_log_rank", f"{s}_score_ratio", f"{s}_list_z"]
    names += ["fused_log_rank"]
    names += [
        "item_log_pop",
        "item_log_pop_30d",
        "item_mean_rating",
        "item_bayes_rating",
        "item_std_rating",
        "item_days_since_first",
        "item_days_since_last",
        "item_year",
        "item_n_genres",
        "item_mean_hour",
        "item_rater_age",
        "item_male_share",
        "user_log_count",
        "user_mean_rating",
        "user_std_rating",
        "user_days_active",
        "user_mean_item_pop",
        "user_mean_item_year",
        "user_mean_hour",
        "user_weekend_share",
        "user_age",
        "user_gender",
        "user_occupation",
    ]
    names += [
        "pop_vs_user",
        "year_vs_user",
        "rating_vs_user",
        "rater_age_vs_user",
        "hour_gap",
        "item_last_vs_user_last_days",
        "item_first_vs_user_last_days",
        "user_first_vs_item_last_days",
        "item_share_in_user_window",
        *(f"item_share_in_user_{unit}s" for unit in units),
        "recent_similarity",
    ]
    return names


def candidate_features(
    ctx: Context, fitted: Fitted, fit_log: Log, users: I64, config: OfflineConfig
) -> tuple[I64, I64, F32]:
    """(user rows, item cols, feature matrix) for the top `candidates` of the fused order per user."""
    n = min(config.candidates, len(ctx.item_ids))
    cand = S.top_n(fitted.fused[users], fitted.x.binary[users], n)
    u = np.repeat(users, cand.shape[1])
    i = cand.reshape(-1)
    stats = _slice_stats(ctx, fit_log, fitted.x)
    recent = recent_matrix(fit_log, fitted.x, config.recent_items)
    recent_sim = np.asarray(recent[users] @ fitted.cooc_sim, dtype=np.float32)
    cols: list[npt.NDArray[Any]] = []
    for s in SOURCES:
        score = fitted.scores[s]
        best = np.max(np.where(np.isfinite(score[users]), score[users], -np.inf), axis=1)
        user_max = np.repeat(np.maximum(np.abs(best), 1e-6), cand.shape[1])
        in_list = np.take_along_axis(score[users], cand, axis=1).astype(np.float64)
        in_list[~np.isfinite(in_list)] = np.nan
        mean = np.nanmean(in_list, axis=1, keepdims=True)
        std = np.nanstd(in_list, axis=1, keepdims=True)
        z = ((in_list - mean) / np.where(std > 0, std, 1.0)).reshape(-1)
        cols += [np.log1p(fitted.ranks[s][u, i]), score[u, i] / user_max, z]
    cols += [np.log1p(fitted.fused_rank[u, i])]
    item_names = [
        name for name in feature_names(config.overlap_units) if name.startswith("item_") and name in stats
    ]
    user_names = [
        name for name in feature_names(config.overlap_units) if name.startswith("user_") and name in stats
    ]
    cols += [stats[name][i] for name in item_names]
    cols += [stats[name][u] for name in user_names]
    hour_gap = np.abs(stats["item_mean_hour"][i] - stats["user_mean_hour"][u])
    cols += [
        stats["item_log_pop"][i] - stats["user_mean_item_pop"][u],
        stats["item_year"][i] - stats["user_mean_item_year"][u],
        stats["item_bayes_rating"][i] - stats["user_mean_rating"][u],
        stats["item_rater_age"][i] - stats["user_age"][u],
        np.minimum(hour_gap, 24.0 - hour_gap),
        (stats["_item_last"][i] - stats["_user_last"][u]) / DAY,
        (stats["_item_first"][i] - stats["_user_last"][u]) / DAY,
        (stats["_user_first"][u] - stats["_item_last"][i]) / DAY,
        *temporal_overlap(fitted.x, fit_log, stats, u, i, config.overlap_units),
        recent_sim[np.repeat(np.arange(len(users)), cand.shape[1]), i],
    ]
    matrix = np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=1)
    assert matrix.shape[1] == len(feature_names(config.overlap_units))
    return u, i, matrix


# ---------------------------------------------------------------- ranker


def relevant_sets(test: Log, users: Sequence[str]) -> dict[str, set[str]]:
    wanted = set(users)
    out: dict[str, set[str]] = {}
    for user, item in zip(test.users.tolist(), test.items.tolist(), strict=True):
        if user in wanted:
            out.setdefault(user, set()).add(item)
    return out


def ranker_slices(train: Log, config: OfflineConfig, seed: int, timer: Timer) -> Iterator[tuple[Log, Log]]:
    """(fitting slice, labelling slice) pairs of `train` for the ranker's training data.

    `ranker_folds` >= 2 (K-fold stacking): train is dealt into K folds stratified by item
    (`stratified_folds`); slice f fits the sources on the other K-1 folds and labels with fold f, so each
    training row labels once and never feeds the sources that score it; `ranker_fold_repeats` deals
    the rows again with other seeds for more groups. Otherwise
    `inner_folds` independent stratified inner splits (`inner_ratio`) are used."""
    if config.ranker_folds >= 2:
        for repeat in range(config.ranker_fold_repeats):
            with timer("inner_split"):
                folds = stratified_folds(train, config.ranker_folds, seed=seed + 1000 + repeat)
            for f in range(config.ranker_folds):
                yield train.take(folds != f), train.take(folds == f)
        return
    for fold in range(config.inner_folds):
        with timer("inner_split"):
            pair = stratified_split(train, config.inner_ratio, seed=seed + 1000 * (fold + 1))
        yield pair


@dataclass
class RankerData:
    """Stage A's pooled groups: `per_user` candidate rows per group, one group per (slice, user)."""

    features: F32
    labels: F64
    per_user: int
    info: dict[str, Any]


def ranker_training_data(
    ctx: Context,
    train: Log,
    config: OfflineConfig,
    seed: int,
    timer: Timer,
    progress: Callable[[str], None] = lambda _: None,
) -> RankerData:
    """Candidates, features and labels of every (fitting slice, labelling slice) pair, pooled."""
    blocks: list[F32] = []
    label_blocks: list[F64] = []
    recalls: list[float] = []
    seconds: dict[str, float] = {}
    sizes: list[tuple[int, int]] = []
    slices = (
        config.ranker_folds * config.ranker_fold_repeats if config.ranker_folds >= 2 else config.inner_folds
    )
    for fold, (inner_train, holdout) in enumerate(ranker_slices(train, config, seed, timer)):
        progress(f"seed {seed}: stage A slice {fold + 1}/{slices}: sources on {len(inner_train)} rows")
        with timer("stage_a_sources"):
            fitted = fit_sources(ctx, inner_train, config, seed + fold)
        seconds = fitted.seconds
        sizes.append((len(inner_train), len(holdout)))
        index = {u: r for r, u in enumerate(ctx.user_ids)}
        present = set(inner_train.users.tolist())
        relevant = relevant_sets(holdout, [u for u in ctx.user_ids if u in present])
        users = np.array(sorted(index[u] for u in relevant), dtype=np.int64)
        with timer("stage_a_features"):
            u, i, fold_features = candidate_features(ctx, fitted, inner_train, users, config)
            item_col = {v: c for c, v in enumerate(ctx.item_ids)}
            positives = {
                (index[user], item_col[item])
                for user, items in relevant.items()
                for item in items
                if item in item_col
            }
            fold_labels = np.fromiter(
                ((a, b) in positives for a, b in zip(u.tolist(), i.tolist(), strict=True)),
                dtype=np.float64,
                count=u.size,
            )
        blocks.append(fold_features)
        label_blocks.append(fold_labels)
        recalls.append(float(fold_labels.sum() / max(1, sum(len(v) for v in relevant.values()))))
    info = {
        "inner_splits": [{"train": a, "holdout": b} for a, b in sizes],
        "inner_candidate_recall": round(float(np.mean(recalls)), 6),
        "source_seconds": seconds,
    }
    per_user = min(config.candidates, len(ctx.item_ids))
    return RankerData(np.vstack(blocks), np.concatenate(label_blocks), per_user, info)


@dataclass(frozen=True)
class Ranker:
    """Stage A's LightGBM models, one per seed. A candidate list's score is the sum of the models'
    z-scores within the list, so each model counts alike whatever the scale of its raw scores (one
    model's order is its raw order)."""

    boosters: tuple[Any, ...]

    def predict(self, features: F32, per_user: int, threads: int) -> F64:
        total = np.zeros((features.shape[0] // max(1, per_user), per_user))
        for booster in self.boosters:
            raw = booster.predict(features, num_threads=threads).reshape(total.shape)
            total += (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + 1e-12)
        out: F64 = total.reshape(-1)
        return out

    def feature_importance(self) -> F64:
        """Total gain per feature, averaged over the models."""
        out: F64 = np.mean([b.feature_importance(importance_type="gain") for b in self.boosters], axis=0)
        return out


def fit_ranker(
    ctx: Context,
    train: Log,
    config: OfflineConfig,
    seed: int,
    timer: Timer,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Ranker, dict[str, Any]]:
    """Stage A: ranker training data (`ranker_training_data`), then the LightGBM models."""
    data = ranker_training_data(ctx, train, config, seed, timer, progress)
    progress(
        f"seed {seed}: stage A ranker: {config.ranker_seeds} LightGBM model(s) on {len(data.labels)} rows"
    )
    ranker, info = train_ranker(data, config, seed, timer)
    return ranker, {**info, **data.info}


def train_ranker(
    data: RankerData, config: OfflineConfig, seed: int, timer: Timer
) -> tuple[Ranker, dict[str, Any]]:
    """`config.ranker_seeds` LightGBM models on the same groups, the first with `seed`."""
    fits = [train_booster(data, config, seed + 1000 * k, timer) for k in range(config.ranker_seeds)]
    info = {key: value for key, value in fits[0][1].items() if key in ("groups", "rows")}
    info["models"] = len(fits)
    info["best_iteration"] = [fit[1]["best_iteration"] for fit in fits]
    if config.early_stopping_rounds > 0:
        info["validation_ndcg@10"] = [fit[1]["validation_ndcg@10"] for fit in fits]
    return Ranker(tuple(booster for booster, _ in fits)), info


def train_booster(
    data: RankerData, config: OfflineConfig, seed: int, timer: Timer
) -> tuple[Any, dict[str, Any]]:
    """One LightGBM model: fixed rounds on every group with a positive, or early stopping on a random
    `validation_fraction` of them."""
    import lightgbm as lgb

    features, labels, per_user = data.features, data.labels, data.per_user
    users = np.arange(features.shape[0] // per_user)
    groups = labels.reshape(len(users), per_user)
    useful = np.flatnonzero(groups.sum(axis=1) > 0)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(useful)
    n_valid = max(1, round(len(shuffled) * config.validation_fraction))
    valid, fit = np.sort(shuffled[:n_valid]), np.sort(shuffled[n_valid:])
    names = feature_names(config.overlap_units)

    # One Dataset per model, never shared between the seeded models: LightGBM's `seed` also samples the
    # rows its bin boundaries come from, and on the validation splits about half of the three models'
    # gain came from their own bins (one shared Dataset: +0.0003 MAP over one model, against +0.0007).
    def dataset(group_rows: I64) -> Any:
        rows = (group_rows[:, None] * per_user + np.arange(per_user)[None, :]).reshape(-1)
        return lgb.Dataset(
            features[rows],
            label=labels[rows],
            group=[per_user] * len(group_rows),
            feature_name=names,
            free_raw_data=False,
        )

    params = config.lgb_params(seed)
    if config.early_stopping_rounds <= 0:
        # fixed number of rounds (chosen on the validation protocol) on every group with a positive
        with timer("stage_a_ranker"):
            booster = lgb.train(params, dataset(useful), num_boost_round=config.max_rounds)
        return booster, {
            "best_iteration": config.max_rounds,
            "groups": len(useful),
            "rows": int(len(useful) * per_user),
        }
    with timer("stage_a_ranker"):
        booster = lgb.train(
            params,
            dataset(fit),
            num_boost_round=config.max_rounds,
            valid_sets=[dataset(valid)],
            valid_names=["valid"],
            callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
        )
    info = {
        "best_iteration": int(booster.best_iteration or config.max_rounds),
        "validation_ndcg@10": round(float(booster.best_score["valid"][f"ndcg@{K}"]), 6),
        "groups": len(useful),
        "rows": int(len(useful) * per_user),
    }
    return booster, info


# ---------------------------------------------------------------- diversity


def mmr(candidates: I64, relevance: F64, vectors: F32, k: int, lam: float) -> I64:
    """Maximal marginal relevance: pick k of `candidates` (best first) maximising
    lam * relevance - (1 - lam) * max cosine similarity to the items already picked. Relevance is
    min-max scaled within the list; lam = 1 is the relevance order."""
    if lam >= 1.0 or len(candidates) <= 1:
        return candidates[np.argsort(-relevance, kind="stable")][:k]
    rel = (relevance - relevance.min()) / max(float(np.ptp(relevance)), 1e-12)
    v = vectors[candidates].astype(np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1.0)
    sim = v @ v.T
    chosen: list[int] = []
    max_sim = np.zeros(len(candidates))
    available = np.ones(len(candidates), dtype=bool)
    for _ in range(min(k, len(candidates))):
        value = np.where(available, lam * rel - (1 - lam) * max_sim, -np.inf)
        best = int(np.argmax(value))
        chosen.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, sim[best])
    return candidates[np.array(chosen, dtype=np.int64)]


# ---------------------------------------------------------------- one split end to end


def _lists(cols: I64, users: Sequence[str], item_ids: Sequence[str]) -> dict[str, list[str]]:
    return {u: [item_ids[c] for c in row] for u, row in zip(users, cols.tolist(), strict=True)}


def beyond_accuracy(
    rankings: dict[str, list[str]], ctx: Context, counts: dict[str, float], vectors: dict[str, F32]
) -> dict[str, float]:
    out = {f"coverage@{K}": coverage(rankings, len(ctx.item_ids), K)}
    out[f"ild@{K}"] = intra_list_diversity(rankings, vectors, K)
    out.update(popularity_bias(rankings, counts, K))
    return out


def split_log(data: Dataset, config: OfflineConfig, seed: int) -> tuple[Log, Log]:
    if config.protocol == "stratified":
        return stratified_split(data.log, config.ratio, filter_by="item", seed=seed)
    if config.protocol == "time":
        return time_split(data.log, 1.0 - config.ratio)
    if config.protocol == "leave-last":
        return leave_last_n(data.log, config.leave_n, seed=seed)
    raise ValueError(f"unknown protocol {config.protocol!r} (stratified, time, leave-last)")


def run_split(
    data: Dataset, config: OfflineConfig, seed: int, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    timer = Timer()
    with timer("split"):
        train, test = split_log(data, config, seed)
        ctx = make_context(data, train)
    progress(
        f"seed {seed}: {len(train)} train / {len(test)} test; stage A (ranker on K-fold stacked slices of train)"
    )
    ranker, ranker_info = fit_ranker(ctx, train, config, seed, timer, progress)
    progress(f"seed {seed}: stage B (sources on all of train, ranking test users)")
    with timer("stage_b_sources"):
        fitted = fit_sources(ctx, train, config, seed)
    relevant = relevant_sets(test, ctx.user_ids)
    users = sorted(relevant)
    index = {u: r for r, u in enumerate(ctx.user_ids)}
    rows = np.array([index[u] for u in users], dtype=np.int64)
    with timer("stage_b_features"):
        _, i, features = candidate_features(ctx, fitted, train, rows, config)
    per_user = features.shape[0] // max(1, len(users))
    with timer("stage_b_rank"):
        predicted = ranker.predict(features, per_user, config.threads)
    cand = i.reshape(len(users), per_user)
    pred = predicted.reshape(len(users), per_user)
    order = np.argsort(-pred, axis=1, kind="stable")
    ranked = np.take_along_axis(cand, order, axis=1)

    with timer("evaluate"):
        seen = fitted.x.binary[rows]
        lists: dict[str, dict[str, list[str]]] = {}
        for name in SOURCES:
            lists[name] = _lists(S.top_n(fitted.scores[name][rows], seen, max(KS)), users, ctx.item_ids)
        lists["retrieval"] = _lists(S.top_n(fitted.fused[rows], seen, max(KS)), users, ctx.item_ids)
        lists["pipeline"] = _lists(ranked, users, ctx.item_ids)
        accuracy = {name: _round(mean_metrics(ranking, relevant, K)) for name, ranking in lists.items()}
        by_k = {
            name: {str(k): _round(mean_metrics(lists[name], relevant, k)) for k in KS}
            for name in ("pipeline", "retrieval", "ease", "pop")
        }
        funnel_lists = {
            name: _lists(S.top_n(fitted.scores[name][rows], seen, max(FUNNEL_KS)), users, ctx.item_ids)
            for name in config.fused
        }
        funnel_lists["fused"] = _lists(S.top_n(fitted.fused[rows], seen, max(FUNNEL_KS)), users, ctx.item_ids)
        funnel = {
            name: {str(k): round(mean_metrics(lst, relevant, k)[f"recall@{k}"], 6) for k in FUNNEL_KS}
            for name, lst in funnel_lists.items()
        }
        funnel["candidates"] = {
            str(per_user): round(mean_metrics(lists["pipeline"], relevant, per_user)[f"recall@{per_user}"], 6)
        }
        counts = dict(
            zip(ctx.item_ids, np.asarray(fitted.x.binary.sum(axis=0)).reshape(-1).tolist(), strict=True)
        )
        genre_vectors = dict(zip(ctx.item_ids, ctx.genres, strict=True))
        beyond = {name: _round(beyond_accuracy(lists[name], ctx, counts, genre_vectors)) for name in lists}
        diversity: dict[str, dict[str, float]] = {}
        for lam in config.mmr_lambdas:
            picked = np.stack(
                [
                    mmr(ranked[r, :50], pred[r][order[r, :50]].astype(np.float64), ctx.genres, K, lam)
                    for r in range(len(users))
                ]
            )
            mmr_lists = _lists(picked, users, ctx.item_ids)
            diversity[str(lam)] = _round(
                {
                    **mean_metrics(mmr_lists, relevant, K),
                    **beyond_accuracy(mmr_lists, ctx, counts, genre_vectors),
                }
            )
        faiss_check = index_report(fitted, rows)
    importance = dict(
        zip(
            feature_names(config.overlap_units),
            (float(v) for v in ranker.feature_importance()),
            strict=True,
        )
    )
    return {
        "seed": seed,
        "sizes": {
            "train": len(train),
            "test": len(test),
            "users_scored": len(users),
            "train_users": len(ctx.user_ids),
            "train_items": len(ctx.item_ids),
            "candidates_per_user": per_user,
        },
        "accuracy": accuracy,
        "by_k": by_k,
        "funnel": funnel,
        "beyond": beyond,
        "mmr": diversity,
        "faiss": faiss_check,
        "ranker": ranker_info,
        "feature_importance": importance,
        "seconds": {**timer.seconds, "stage_b_source_detail": fitted.seconds},
    }


def index_report(fitted: Fitted, rows: I64) -> dict[str, Any]:
    """The FAISS index type chosen for this catalogue, and each index's recall@100 against exact search."""
    out: dict[str, Any] = {}
    sample = rows[:200]
    for name in ("ease", "als", "bpr"):
        items = fitted.item_vectors[name]
        queries = fitted.user_vectors[name][sample]
        chosen, kind = S.build_index(items)
        hnsw, _ = S.build_index(items, "hnsw")
        out[name] = {
            "chosen": kind,
            "dim": int(items.shape[1]),
            "items": int(items.shape[0]),
            f"recall@100_{kind}": round(S.index_recall(chosen, items, queries, 100), 6),
            "recall@100_hnsw": round(S.index_recall(hnsw, items, queries, 100), 6),
        }
    return out


def _round(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in values.items()}


def run(
    data: Dataset,
    config: OfflineConfig,
    seeds: Sequence[int],
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every seed end to end, then mean / std / min / max of each headline number across seeds."""
    started = time.perf_counter()
    per_seed = [run_split(data, config, seed, progress) for seed in seeds]
    return {
        "dataset": {"source": data.source, "fingerprint": data.fingerprint, "interactions": len(data.log)},
        "protocol": {
            "name": config.protocol,
            "ratio": config.ratio,
            "filter_by": "item",
            "min_rating": 1,
            "relevance": "every test interaction",
            "scored_users": "in train and in test",
            "train_items_removed": True,
            "map": "sum of precision at each hit in the top k / number of the user's test items",
        },
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "seeds": list(seeds),
        "per_seed": per_seed,
        "summary": summarize(per_seed),
        "seconds": round(time.perf_counter() - started, 3),
    }


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """{section: {name: {metric: {mean, std, min, max}}}} for accuracy, beyond, mmr and funnel."""

    def agg(values: list[float]) -> dict[str, float]:
        a = np.asarray(values, dtype=np.float64)
        return {
            "mean": round(float(a.mean()), 6),
            "std": round(float(a.std(ddof=1)) if a.size > 1 else 0.0, 6),
            "min": round(float(a.min()), 6),
            "max": round(float(a.max()), 6),
        }

    out: dict[str, Any] = {}
    for section in ("accuracy", "beyond", "mmr", "funnel"):
        first = per_seed[0][section]
        out[section] = {
            name: {m: agg([run[section][name][m] for run in per_seed]) for m in first[name]} for name in first
        }
    importance = [run["feature_importance"] for run in per_seed]
    out["feature_importance"] = {
        name: round(float(np.mean([imp[name] for imp in importance])), 3) for name in importance[0]
    }
    return out
