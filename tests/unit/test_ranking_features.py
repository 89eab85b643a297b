"""The shared ranker assembly's sequence-neighbour feature: `ItemNeighbours` and its column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.common import ranking_features as rf


def neighbours() -> rf.ItemNeighbours:
    """Four items: 0 -> {1: 0.5, 2: 0.25}, 1 -> {2: 1.0}, 2 -> {}, 3 -> {0: 2.0}."""
    return rf.ItemNeighbours(
        np.array([0, 2, 3, 3, 4], dtype=np.int64),
        np.array([1, 2, 2, 0], dtype=np.int32),
        np.array([0.5, 0.25, 1.0, 2.0], dtype=np.float32),
    )


def test_scores_sum_the_recent_items_weights_to_each_candidate() -> None:
    scores = neighbours().scores([0, 1], [2, 1, 3, 0, -1])
    np.testing.assert_array_equal(scores[:4], np.array([1.25, 0.5, 0.0, 0.0], dtype=np.float32))
    assert np.isnan(scores[4])  # a candidate the version does not know
    # A recent item listed twice counts twice; unknown recent rows are ignored.
    np.testing.assert_array_equal(neighbours().scores([3, 3, -1, 9], [0, 1]), [4.0, 0.0])
    np.testing.assert_array_equal(neighbours().scores([], [0, 2]), [0.0, 0.0])


def test_a_saved_file_loads_back_and_a_malformed_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / rf.NEIGHBOURS_FILE
    neighbours().save(path)
    loaded = rf.ItemNeighbours.load(path, 4)
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(neighbours(), name))
    with pytest.raises(ValueError, match=r"item_neighbours.npz has 4 item rows, expected 5"):
        rf.ItemNeighbours.load(path, 5)
    rf.ItemNeighbours(np.array([0, 1]), np.array([7], dtype=np.int32), np.ones(1, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"a neighbour is outside item rows 0\.\.0"):
        rf.ItemNeighbours.load(path, 1)
    rf.ItemNeighbours(np.array([0, 2]), np.array([0], dtype=np.int32), np.ones(1, np.float32)).save(path)
    with pytest.raises(ValueError, match="not a row pointer"):
        rf.ItemNeighbours.load(path, 1)
    with path.open("wb") as f:
        np.savez(f, indptr=np.array([0]))
    with pytest.raises(ValueError, match=r"lacks \['indices', 'weights'\]"):
        rf.ItemNeighbours.load(path, 0)


def test_assemble_puts_recent_sequence_in_its_column() -> None:
    item = np.zeros((3, len(rf.ITEM_FEATURES)), dtype=np.float32)
    scores = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    column = rf.RANKER_FEATURES.index("recent_sequence")
    matrix = rf.assemble(np.empty(0, np.float32), item, scores, recent_sequence=np.array([0.5, 0.0, 2.0]))
    np.testing.assert_array_equal(matrix[:, column], [0.5, 0.0, 2.0])
    assert np.isnan(rf.assemble(np.empty(0, np.float32), item, scores)[:, column]).all()
    with pytest.raises(ValueError, match="recent_sequence: expected 3 values, got 2"):
        rf.assemble(np.empty(0, np.float32), item, scores, recent_sequence=np.zeros(2))
