"""The seeded splits: stratified (recommenders' protocol), global time, leave-last-n."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from services.trainer.data import Log
from services.trainer.splits import leave_last_n, stratified_split, time_split


def make_log(n_users: int = 30, n_items: int = 12, n: int = 300, seed: int = 0) -> Log:
    rng = np.random.default_rng(seed)
    pairs = sorted(
        {
            (int(u), int(i))
            for u, i in zip(rng.integers(0, n_users, n), rng.integers(0, n_items, n), strict=True)
        }
    )
    rng.shuffle(pairs)  # file order is not time order
    ts = rng.integers(0, 10_000, len(pairs)).astype(np.float64)
    order = np.argsort(ts, kind="stable")
    users = np.array([f"u{u}" for u, _ in pairs])[order]
    items = np.array([f"i{i}" for _, i in pairs])[order]
    return Log(users, items, np.ones(len(pairs), np.float32), ts[order], order.astype(np.int64))


def rows(log: Log) -> set[tuple[str, str]]:
    return set(zip(log.users.tolist(), log.items.tolist(), strict=True))


def reference_stratified(log: Log, ratio: float, seed: int) -> set[tuple[str, str]]:
    """recommenders' _do_stratification, step by step in plain Python (file order, seeded draws)."""
    file_rows = sorted(range(len(log)), key=lambda r: int(log.positions[r]))  # type: ignore[index]
    np.random.seed(seed)
    draws = np.random.rand(len(file_rows))
    by_item: dict[str, list[tuple[float, int]]] = {}
    for draw, r in zip(draws.tolist(), file_rows, strict=True):
        by_item.setdefault(str(log.items[r]), []).append((draw, r))
    train: set[tuple[str, str]] = set()
    for group in by_item.values():
        group.sort()
        for rank, (_, r) in enumerate(group, start=1):
            if rank / len(group) <= ratio:
                train.add((str(log.users[r]), str(log.items[r])))
    return train


def test_stratified_split_matches_the_reference_procedure() -> None:
    log = make_log()
    for seed in (42, 43, 7):
        train, _ = stratified_split(log, 0.75, filter_by="item", seed=seed)
        assert rows(train) == reference_stratified(log, 0.75, seed)


def test_stratified_split_keeps_the_ratio_per_item_and_partitions_the_log() -> None:
    log = make_log()
    train, test = stratified_split(log, 0.75, seed=42)
    assert len(train) + len(test) == len(log)
    assert rows(train).isdisjoint(rows(test))
    assert rows(train) | rows(test) == rows(log)
    total = Counter(log.items.tolist())
    in_train = Counter(train.items.tolist())
    for item, n in total.items():
        assert in_train[item] == int(np.floor(0.75 * n + 1e-9)), item


def test_stratified_split_is_deterministic_by_seed() -> None:
    log = make_log()
    a, _ = stratified_split(log, 0.75, seed=42)
    b, _ = stratified_split(log, 0.75, seed=42)
    c, _ = stratified_split(log, 0.75, seed=43)
    assert rows(a) == rows(b)
    assert rows(a) != rows(c)


def test_stratified_split_by_user_and_min_rating() -> None:
    log = make_log()
    train, test = stratified_split(log, 0.5, min_rating=12, filter_by="user", seed=1)
    counts = Counter(log.users.tolist())
    kept = {u for u, n in counts.items() if n >= 12}
    assert set(train.users.tolist()) | set(test.users.tolist()) == kept
    with pytest.raises(ValueError, match="ratio"):
        stratified_split(log, 1.0)
    with pytest.raises(ValueError, match="min_rating"):
        stratified_split(log, 0.5, min_rating=0)


def test_time_split_and_leave_last_n() -> None:
    log = make_log()
    train, test = time_split(log, 0.2)
    assert train.timestamps.max() < test.timestamps.min()
    train, test = leave_last_n(log, 2, seed=3)
    assert rows(train).isdisjoint(rows(test))
    assert len(train) + len(test) == len(log)
    for user in set(test.users.tolist()):
        assert (test.users == user).sum() == 2
        assert train.timestamps[train.users == user].max() <= test.timestamps[test.users == user].min()
    again, _ = leave_last_n(log, 2, seed=3)
    assert rows(again) == rows(train)
