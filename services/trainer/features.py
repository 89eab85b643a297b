"""User and item feature tables computed from one slice of the log (no look at anything later).

Column order and names are fixed by services.common.ranking_features (USER_FEATURES, ITEM_FEATURES).
`reference` is the time the slice ends: ages and decayed popularity are measured from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.common.ranking_features import GENRES, ITEM_FEATURES, USER_FEATURES
from services.trainer.data import Item, Log, Tags

DAY = 86400.0
BAYES_PRIOR = 10.0

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def genre_matrix(item_ids: Sequence[str], catalog: dict[str, Item]) -> F32:
    """(n_items, len(GENRES)) one-hot genres."""
    index = {g: j for j, g in enumerate(GENRES)}
    out = np.zeros((len(item_ids), len(GENRES)), dtype=np.float32)
    for row, item in enumerate(item_ids):
        meta = catalog.get(item)
        if meta is not None:
            for genre in meta.genres:
                if genre in index:
                    out[row, index[genre]] = 1.0
    return out


def item_years(item_ids: Sequence[str], catalog: dict[str, Item]) -> F64:
    return np.array([catalog[i].year if i in catalog else np.nan for i in item_ids], dtype=np.float64)


def _codes(values: npt.NDArray[np.str_], ids: Sequence[str]) -> npt.NDArray[np.int64]:
    """Row of each value in `ids` (-1 when absent)."""
    index = {v: i for i, v in enumerate(ids)}
    return np.fromiter((index.get(v, -1) for v in values.tolist()), dtype=np.int64, count=len(values))


def _group_stats(codes: npt.NDArray[np.int64], values: F64, n: int) -> tuple[F64, F64, F64]:
    """Per-group count, mean and std (NaN where the group is empty)."""
    count = np.bincount(codes, minlength=n).astype(np.float64)
    total = np.bincount(codes, weights=values, minlength=n)
    squares = np.bincount(codes, weights=values * values, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        var = np.where(count > 0, squares / count - mean * mean, np.nan)
    return count, mean, np.sqrt(np.maximum(var, 0.0))


def _first_last(codes: npt.NDArray[np.int64], ts: F64, n: int) -> tuple[F64, F64]:
    first = np.full(n, np.inf)
    last = np.full(n, -np.inf)
    np.minimum.at(first, codes, ts)
    np.maximum.at(last, codes, ts)
    first[np.isinf(first)] = np.nan
    last[np.isinf(last)] = np.nan
    return first, last


def _log_days(seconds: F64) -> F64:
    result: F64 = np.log1p(np.maximum(seconds, 0.0) / DAY)
    return result


def item_features(
    log: Log,
    item_ids: Sequence[str],
    catalog: dict[str, Item],
    reference: float,
    tags: Tags | None = None,
) -> F32:
    """(len(item_ids), len(ITEM_FEATURES)) from the interactions in `log` (all before `reference`)."""
    n = len(item_ids)
    codes = _codes(log.items, item_ids)
    keep = codes >= 0
    codes, ts = codes[keep], log.timestamps[keep]
    ratings = log.ratings[keep].astype(np.float64)
    count, mean, std = _group_stats(codes, ratings, n)
    global_mean = float(ratings.mean()) if ratings.size else 0.0
    total = np.bincount(codes, weights=ratings, minlength=n)
    bayes = (total + BAYES_PRIOR * global_mean) / (count + BAYES_PRIOR)
    age = np.maximum(reference - ts, 0.0) / DAY
    pop30 = np.bincount(codes, weights=np.exp(-age / 30.0), minlength=n)
    pop365 = np.bincount(codes, weights=np.exp(-age / 365.0), minlength=n)
    first, last = _first_last(codes, ts, n)
    tag_count = np.zeros(n)
    if tags is not None and len(tags):
        tag_codes = _codes(tags.items[tags.timestamps < reference], item_ids)
        tag_count = np.bincount(tag_codes[tag_codes >= 0], minlength=n).astype(np.float64)
    genres = genre_matrix(item_ids, catalog)
    columns = [
        np.log1p(count),
        np.log1p(pop30),
        np.log1p(pop365),
        mean,
        bayes,
        std,
        _log_days(reference - first),
        _log_days(reference - last),
        item_years(item_ids, catalog),
        np.log1p(tag_count),
        genres.sum(axis=1),
    ]
    out = np.empty((n, len(ITEM_FEATURES)), dtype=np.float32)
    out[:, : len(columns)] = np.stack(columns, axis=1)
    out[:, len(columns) :] = genres
    return out


def user_features(
    log: Log,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    items: F32,
    reference: float,
) -> F32:
    """(len(user_ids), len(USER_FEATURES)); `items` is `item_features` of the same slice."""
    n = len(user_ids)
    ucodes = _codes(log.users, user_ids)
    icodes = _codes(log.items, item_ids)
    keep = (ucodes >= 0) & (icodes >= 0)
    ucodes, icodes, ts = ucodes[keep], icodes[keep], log.timestamps[keep]
    count, mean, std = _group_stats(ucodes, log.ratings[keep].astype(np.float64), n)
    first, last = _first_last(ucodes, ts, n)
    item_pop = items[icodes, ITEM_FEATURES.index("item_log_count")].astype(np.float64)
    _, mean_pop, _ = _group_stats(ucodes, item_pop, n)
    years = items[icodes, ITEM_FEATURES.index("item_year")].astype(np.float64)
    has_year = ~np.isnan(years)
    _, mean_year, _ = _group_stats(ucodes[has_year], years[has_year], n)
    genre_start = ITEM_FEATURES.index("item_n_genres") + 1
    genre_sums = np.zeros((n, len(GENRES)))
    np.add.at(genre_sums, ucodes, items[icodes, genre_start:].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(count[:, None] > 0, genre_sums / count[:, None], np.nan)
    columns = [
        np.log1p(count),
        mean,
        std,
        _log_days(last - first),
        _log_days(reference - last),
        mean_pop,
        mean_year,
    ]
    out = np.empty((n, len(USER_FEATURES)), dtype=np.float32)
    out[:, : len(columns)] = np.stack(columns, axis=1)
    out[:, len(columns) :] = profile
    return out
