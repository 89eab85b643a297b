"""Seeded train/test splits of an interaction log.

`stratified_split` reproduces Microsoft recommenders' `python_stratified_split` (the protocol of the
published MovieLens-100k comparison), row for row:

1. optionally drop groups (items with filter_by="item", users with "user") with fewer than
   `min_rating` rows;
2. draw one uniform random number per row *in input-file order* from numpy's legacy generator seeded
   with `seed` (`np.random.seed(seed); np.random.rand(n)`);
3. sort the rows by (group, random number) and give each row the rank r/n_group (r = 1..n_group);
4. rows with rank <= ratio go to train, the rest to test.

So each group puts the rows with r/n <= ratio in train (floor(ratio * n) rows, up to the floating point
of r/n exactly as in the reference) and the rest in test; a group of one row goes wholly to test. The
choice depends only on the seed and the file order, not on timestamps, and not on how group ids sort
(only on which rows share one), so it matches the pandas implementation for the same input file.

`time_split` cuts the whole log at one moment; `leave_last_n` holds out each user's latest n rows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from services.trainer.data import DataError, Log
from services.trainer.data import time_split as _time_split

I64 = npt.NDArray[np.int64]


def _group_codes(values: npt.NDArray[np.str_]) -> I64:
    _, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64)


def stratified_split(
    log: Log,
    ratio: float = 0.75,
    min_rating: int = 1,
    filter_by: Literal["item", "user"] = "item",
    seed: int = 42,
) -> tuple[Log, Log]:
    """(train, test) as recommenders' `python_stratified_split` (see the module docstring)."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    if min_rating < 1:
        raise ValueError(f"min_rating must be >= 1, got {min_rating}")
    if filter_by not in ("item", "user"):
        raise ValueError(f"filter_by must be 'item' or 'user', got {filter_by!r}")
    order = log.file_order()  # rows of `log` in input-file order
    keys = (log.items if filter_by == "item" else log.users)[order]
    codes = _group_codes(keys)
    counts = np.bincount(codes)
    if min_rating > 1:
        keep = counts[codes] >= min_rating
        order, codes = order[keep], codes[keep]
        counts = np.bincount(codes, minlength=counts.shape[0])
    state = np.random.RandomState(seed)  # what np.random.seed(seed) seeds
    draws = state.rand(order.shape[0])
    by_group = np.lexsort((draws, codes))  # positions into `order`, grouped, random within a group
    sorted_codes = codes[by_group]
    starts = np.searchsorted(sorted_codes, sorted_codes, side="left")
    rank = (np.arange(by_group.shape[0]) - starts + 1) / counts[sorted_codes]
    in_train = np.zeros(len(log), dtype=bool)
    in_test = np.zeros(len(log), dtype=bool)
    in_train[order[by_group[rank <= ratio]]] = True
    in_test[order[by_group[rank > ratio]]] = True
    return log.take(in_train), log.take(in_test)


def time_split(log: Log, test_fraction: float) -> tuple[Log, Log]:
    """(train, test): the latest `test_fraction` of interactions by time (ties all go to test)."""
    train, test, _ = _time_split(log, test_fraction)
    return train, test


def leave_last_n(log: Log, n: int = 1, seed: int = 42) -> tuple[Log, Log]:
    """(train, test): each user's latest `n` interactions go to test, when the user keeps at least one
    in train. Rows sharing a timestamp are ordered by a seeded random tie-break."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(log) == 0:
        raise DataError("cannot split an empty log")
    codes = _group_codes(log.users)
    tie = np.random.default_rng(seed).random(len(log))
    order = np.lexsort((tie, log.timestamps, codes))  # per user, oldest first
    sorted_codes = codes[order]
    counts = np.bincount(codes)
    ends = np.searchsorted(sorted_codes, sorted_codes, side="right")
    from_end = ends - np.arange(order.shape[0])  # 1 for the user's latest row
    held = (from_end <= n) & (counts[sorted_codes] > n)
    in_test = np.zeros(len(log), dtype=bool)
    in_test[order[held]] = True
    return log.take(~in_test), log.take(in_test)


def stratified_folds(log: Log, k: int = 5, filter_by: Literal["item", "user"] = "item", seed: int = 0) -> I64:
    """Fold index (0..k-1) of every row of `log`, stratified like `stratified_split`: within each group
    (item or user) the rows are shuffled with `seed` and dealt to the folds in turn from a random
    starting fold, so every row is in exactly one fold and each group's rows are spread evenly (fold
    sizes within a group differ by at most one)."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if filter_by not in ("item", "user"):
        raise ValueError(f"filter_by must be 'item' or 'user', got {filter_by!r}")
    order = log.file_order()
    codes = _group_codes((log.items if filter_by == "item" else log.users)[order])
    rng = np.random.default_rng(seed)
    draws = np.asarray(rng.random(size=order.shape[0]), dtype=np.float64)
    offsets = rng.integers(0, k, size=int(codes.max()) + 1 if codes.size else 0)
    by_group = np.lexsort((draws, codes))
    sorted_codes = codes[by_group]
    starts = np.searchsorted(sorted_codes, sorted_codes, side="left")
    position = np.arange(by_group.shape[0]) - starts
    folds = np.empty(len(log), dtype=np.int64)
    folds[order[by_group]] = (position + offsets[sorted_codes]) % k
    return folds
