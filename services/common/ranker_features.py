"""The ranker's feature schema and the one function that builds its input, for training and serving.

The ranking service and the trainer both call `assemble` with what serving has: the user's feature row
(from the features service), the candidates' item feature rows (the ranking service's copy of the
artifact version), and the candidates with their per-source columns (`services.common.fusion`). The
names, in order, are written into every version's manifest; the ranking service refuses a version whose
names differ from the ones it builds.

Per source s of the version: `s_log_rank` (log1p of the candidate's rank in s's own list; missing past
its depth), `s_score_ratio` (the score over the user's best score from s) and `s_list_z` (the score's
z-score within the candidate list): scale-free views, because raw scores change scale between the
slices the ranker learns on and the whole log it serves. Then the fused rank, the item and user rows,
and cross features (gaps between the item's statistics and the user's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.common.fusion import CandidateColumns

F32 = npt.NDArray[np.float32]

#: Item feature rows (services/trainer/stats.py computes them from the slice; metadata where given).
ITEM_FEATURES: tuple[str, ...] = (
    "item_log_pop",  # log1p(share of the slice's interactions * 1e4)
    "item_log_pop_30d",  # the same with each interaction decayed by exp(-age / 30 days)
    "item_mean_rating",
    "item_bayes_rating",  # mean rating shrunk towards the global mean (10 pseudo-ratings)
    "item_std_rating",
    "item_days_since_first",  # from the item's first interaction to the slice's end
    "item_days_since_last",
    "item_year",  # release year (metadata or the title), NaN when unknown
    "item_n_genres",
    "item_mean_hour",  # mean hour of day (UTC) of its interactions
    "item_rater_age",  # mean age of the users who interacted (when ages are known)
    "item_male_share",
    # log1p(the item's shown-not-chosen (user, item) pairs until the slice's end / the slice's
    # interactions * 1e4): impressions of the platform's own that got no click (0 without impressions)
    "item_log_skipped",
)
#: User feature rows (from the slice; demographics where given).
USER_FEATURES: tuple[str, ...] = (
    "user_log_count",  # log1p(interactions / the mean user's)
    "user_mean_rating",
    "user_std_rating",
    "user_days_active",  # first to last interaction
    "user_days_since_first",  # to the slice's end
    "user_days_since_last",
    "user_mean_item_pop",  # mean item_log_pop of the user's items
    "user_mean_item_year",
    "user_mean_hour",
    "user_weekend_share",
    "user_age",
    "user_gender",  # 1 male, 0 female, NaN unknown
    "user_occupation",  # category code, NaN unknown
)
CROSS_FEATURES: tuple[str, ...] = (
    "pop_vs_user",
    "year_vs_user",
    "rating_vs_user",
    "rater_age_vs_user",
    "hour_gap",  # circular distance between the item's and the user's mean hours
    "item_last_vs_user_last_days",
    "item_first_vs_user_last_days",
    "user_first_vs_item_last_days",
)
SOURCE_FEATURES: tuple[str, ...] = ("log_rank", "score_ratio", "list_z")

_I = {name: i for i, name in enumerate(ITEM_FEATURES)}
_U = {name: i for i, name in enumerate(USER_FEATURES)}


def ranker_features(sources: Sequence[str]) -> list[str]:
    """The ranker's input columns for a version whose sources are `sources`, in order."""
    names = [f"{s}_{f}" for s in sources for f in SOURCE_FEATURES]
    return [*names, "fused_log_rank", *ITEM_FEATURES, *USER_FEATURES, *CROSS_FEATURES]


def feature_groups(sources: Sequence[str]) -> dict[str, list[str]]:
    """The ranker's columns in groups, in order: one per source (its three columns), the fused rank,
    the item row, the user row and the cross features; every column of `ranker_features` once."""
    groups = {s: [f"{s}_{f}" for f in SOURCE_FEATURES] for s in sources}
    return {
        **groups,
        "fused_rank": ["fused_log_rank"],
        "item": list(ITEM_FEATURES),
        "user": list(USER_FEATURES),
        "cross": list(CROSS_FEATURES),
    }


def assemble(
    sources: Sequence[str],
    user_values: npt.NDArray[np.floating],
    item_values: npt.NDArray[np.floating],
    candidates: CandidateColumns,
) -> F32:
    """The ranker's (n, len(ranker_features(sources))) float32 input for one user's n candidates.

    user_values: (len(USER_FEATURES),), or empty for a user without a profile (all NaN);
    item_values: (n, len(ITEM_FEATURES)), NaN rows for items without one;
    candidates: fused order; a source without a column (not run for this request) gives NaN."""
    n = len(candidates)
    item = np.asarray(item_values, dtype=np.float64)
    if item.shape != (n, len(ITEM_FEATURES)):
        raise ValueError(f"item_values: expected shape ({n}, {len(ITEM_FEATURES)}), got {item.shape}")
    user = np.asarray(user_values, dtype=np.float64).reshape(-1)
    if user.size == 0:
        user = np.full(len(USER_FEATURES), np.nan)
    if user.size != len(USER_FEATURES):
        raise ValueError(f"user_values: expected {len(USER_FEATURES)} values, got {user.size}")
    out = np.empty(
        (n, len(sources) * len(SOURCE_FEATURES) + 1 + item.shape[1] + user.size + len(CROSS_FEATURES))
    )
    col = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in sources:
            column = candidates.columns.get(s)
            if column is None or n == 0:
                out[:, col : col + 3] = np.nan
            else:
                scores = column.scores.astype(np.float64)
                out[:, col] = np.log1p(column.ranks.astype(np.float64))
                out[:, col + 1] = scores / max(abs(column.best), 1e-6) if np.isfinite(column.best) else np.nan
                std = float(np.std(scores))
                out[:, col + 2] = (scores - np.mean(scores)) / (std if std > 0 else 1.0)
            col += 3
        out[:, col] = np.log1p(np.arange(n, dtype=np.float64))
        col += 1
        out[:, col : col + item.shape[1]] = item
        col += item.shape[1]
        out[:, col : col + user.size] = user
        col += user.size
        hour_gap = np.abs(item[:, _I["item_mean_hour"]] - user[_U["user_mean_hour"]])
        cross = (
            item[:, _I["item_log_pop"]] - user[_U["user_mean_item_pop"]],
            item[:, _I["item_year"]] - user[_U["user_mean_item_year"]],
            item[:, _I["item_bayes_rating"]] - user[_U["user_mean_rating"]],
            item[:, _I["item_rater_age"]] - user[_U["user_age"]],
            np.minimum(hour_gap, 24.0 - hour_gap),
            user[_U["user_days_since_last"]] - item[:, _I["item_days_since_last"]],
            user[_U["user_days_since_last"]] - item[:, _I["item_days_since_first"]],
            item[:, _I["item_days_since_last"]] - user[_U["user_days_since_first"]],
        )
        for values in cross:
            out[:, col] = values
            col += 1
    result: F32 = out.astype(np.float32)
    return result
