"""bench/replay.py's own rules: the time slices, who is scored on what, how a new movie is described when
it first appears, and the paired bootstrap (the run itself is the benchmark)."""

from __future__ import annotations

import numpy as np

from bench import replay
from bench.served import relevant_sets, unseen_sets
from services.trainer.data import BUNDLED_DATA, Log


def log(rows: list[tuple[str, str, float]]) -> Log:
    return Log(
        np.array([r[0] for r in rows], dtype=str),
        np.array([r[1] for r in rows], dtype=str),
        np.full(len(rows), 4.0, dtype=np.float32),
        np.array([r[2] for r in rows], dtype=np.float64),
    )


def test_the_slices_follow_time_and_cover_the_log() -> None:
    shuffled = log([(f"u{i % 3}", f"i{i}", float((i * 7) % 20)) for i in range(20)])
    train, replayed, scored = replay.time_slices(shuffled)
    assert (len(train), len(replayed), len(scored)) == (16, 2, 2)
    assert train.timestamps.max() <= replayed.timestamps.min() <= replayed.timestamps.max()
    assert replayed.timestamps.max() <= scored.timestamps.min()


def test_scored_items_are_those_not_rated_before_and_newcomers_get_all_of_theirs() -> None:
    history = log([("a", "x", 1), ("a", "y", 2)])
    scored = log([("a", "x", 3), ("a", "z", 4), ("new", "x", 5), ("new", "w", 6)])
    assert unseen_sets(history, scored) == {"a": {"z"}, "new": {"x", "w"}}
    assert relevant_sets(history, scored) == {"a": {"z"}}


def test_a_new_movie_is_described_as_known_when_it_first_appears() -> None:
    meta = replay.movies(BUNDLED_DATA)
    tags = {"1": [(10.0, "pixar"), (20.0, "fun"), (30.0, "later")]}
    item = replay.catalogue_item("1", 20.0, meta, tags)
    assert item.title.startswith("Toy Story") and "Animation" in item.categories
    assert item.published_at_ms == 788918400000  # 1995-01-01 UTC, the year in the title
    assert item.tags == ("fun", "pixar")  # none given after it appeared


def test_the_paired_difference_brackets_the_mean_difference() -> None:
    rng = np.random.default_rng(1)
    before = rng.random(200)
    better = replay.paired_difference(before + 0.1, before)
    assert better["mean"] == 0.1 and better["ci95"][0] > 0 and better["users_worse"] == 0
    noise = replay.paired_difference(before + rng.normal(0, 0.3, 200), before)
    assert noise["ci95"][0] < noise["mean"] < noise["ci95"][1]
