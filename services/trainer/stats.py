"""Item and user feature rows from one slice of the log: the statistics the ranker sees (names and order:
services.common.ranker_features.ITEM_FEATURES and USER_FEATURES). Only the slice is read (nothing
later, nothing held out); ages are measured from the slice's last interaction."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.common.ranker_features import ITEM_FEATURES, USER_FEATURES
from services.trainer.data import Log
from services.trainer.universe import Universe

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
DAY = 86_400.0
BAYES_PRIOR = 10.0


def _skipped(universe: Universe, end: float) -> F64:
    """Per item row, the distinct (user, item) pairs shown and not chosen no later than `end` (what a
    model fitted on a slice ending there may know)."""
    shown = universe.shown
    if not len(shown):
        return np.zeros(universe.n_items)
    keep = shown.timestamps <= end
    pairs = set(zip(shown.users[keep].tolist(), shown.items[keep].tolist(), strict=True))
    rows = np.fromiter((universe.item_row.get(i, -1) for _, i in pairs), dtype=np.int64, count=len(pairs))
    return np.bincount(rows[rows >= 0], minlength=universe.n_items).astype(np.float64)


def _group(codes: I64, values: F64, n: int) -> tuple[F64, F64, F64]:
    """Per-group count, mean and std (NaN where the group is empty)."""
    count = np.bincount(codes, minlength=n).astype(np.float64)
    total = np.bincount(codes, weights=values, minlength=n)
    sq = np.bincount(codes, weights=values * values, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        std = np.sqrt(np.maximum(np.where(count > 0, sq / count - mean * mean, np.nan), 0.0))
    return count, mean, std


def _extreme(codes: I64, values: F64, n: int, first: bool) -> F64:
    out = np.full(n, np.inf if first else -np.inf)
    (np.minimum if first else np.maximum).at(out, codes, values)
    out[~np.isfinite(out)] = np.nan
    return out


def feature_rows(universe: Universe, log: Log) -> tuple[F32, F32]:
    """(item rows (items, len(ITEM_FEATURES)), user rows (users, len(USER_FEATURES))) of `log`."""
    n_u, n_i = len(universe.user_ids), universe.n_items
    urow, icol = universe.rows(log)
    keep = (urow >= 0) & (icol >= 0)
    urow, icol = urow[keep], icol[keep]
    r = log.ratings[keep].astype(np.float64)
    ts = log.timestamps[keep]
    end = float(ts.max()) if ts.size else 0.0
    hour = (ts % DAY) / 3600.0
    weekend = ((np.floor(ts / DAY) + 4) % 7 >= 5).astype(np.float64)  # 1970-01-01 was a Thursday

    i_count, i_mean, i_std = _group(icol, r, n_i)
    u_count, u_mean, u_std = _group(urow, r, n_u)
    global_mean = float(r.mean()) if r.size else 0.0
    i_bayes = (np.bincount(icol, weights=r, minlength=n_i) + BAYES_PRIOR * global_mean) / (
        i_count + BAYES_PRIOR
    )
    i_first, i_last = _extreme(icol, ts, n_i, True), _extreme(icol, ts, n_i, False)
    u_first, u_last = _extreme(urow, ts, n_u, True), _extreme(urow, ts, n_u, False)
    total = max(1.0, float(r.size))
    i_logpop = np.log1p(i_count / total * 1e4)
    decayed = np.bincount(icol, weights=np.exp(-(end - ts) / DAY / 30.0), minlength=n_i)
    _, u_mean_pop, _ = _group(urow, i_logpop[icol], n_u)
    years = universe.item_year[icol]
    ok = np.isfinite(years)
    _, u_mean_year, _ = _group(urow[ok], years[ok], n_u)
    _, i_hour, _ = _group(icol, hour, n_i)
    _, u_hour, _ = _group(urow, hour, n_u)
    _, u_weekend, _ = _group(urow, weekend, n_u)
    rater_age = universe.user_age[urow]
    ok = np.isfinite(rater_age)
    _, i_rater_age, _ = _group(icol[ok], rater_age[ok], n_i)
    gender = universe.user_gender[urow]
    ok = np.isfinite(gender)
    _, i_male, _ = _group(icol[ok], gender[ok], n_i)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_count = float(u_count[u_count > 0].mean()) if (u_count > 0).any() else 1.0
        items = {
            "item_log_pop": i_logpop,
            "item_log_pop_30d": np.log1p(decayed / total * 1e4),
            "item_mean_rating": i_mean,
            "item_bayes_rating": i_bayes,
            "item_std_rating": i_std,
            "item_days_since_first": (end - i_first) / DAY,
            "item_days_since_last": (end - i_last) / DAY,
            "item_year": universe.item_year,
            "item_n_genres": (universe.genres > 0).sum(axis=1).astype(np.float64),
            "item_mean_hour": i_hour,
            "item_rater_age": i_rater_age,
            "item_male_share": i_male,
            "item_log_skipped": np.log1p(_skipped(universe, end) / total * 1e4),
        }
        users = {
            "user_log_count": np.log1p(u_count / mean_count),
            "user_mean_rating": u_mean,
            "user_std_rating": u_std,
            "user_days_active": (u_last - u_first) / DAY,
            "user_days_since_first": (end - u_first) / DAY,
            "user_days_since_last": (end - u_last) / DAY,
            "user_mean_item_pop": u_mean_pop,
            "user_mean_item_year": u_mean_year,
            "user_mean_hour": u_hour,
            "user_weekend_share": u_weekend,
            "user_age": universe.user_age,
            "user_gender": universe.user_gender,
            "user_occupation": universe.user_occupation,
        }
    item_rows = np.stack([np.asarray(items[n], dtype=np.float64) for n in ITEM_FEATURES], axis=1)
    user_rows = np.stack([np.asarray(users[n], dtype=np.float64) for n in USER_FEATURES], axis=1)
    return item_rows.astype(np.float32), user_rows.astype(np.float32)
