"""The columnar Candidates message: built from blocks, validated, turned back into ScoredItems."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.v1 import common_pb2
from services.common import candidates
from services.common.rpc import InvalidArgument


def test_blocks_keep_their_order_and_share_one_source_table() -> None:
    built = candidates.build(
        [
            (["a", "b"], np.array([0.9, 0.5]), "ann"),
            ([], np.array([]), "recent"),  # an empty block adds no source name
            (["c"], [-1.0], "popular"),
            (["d"], [-2.0], "ann"),
        ]
    )
    assert list(built.item_ids) == ["a", "b", "c", "d"]
    assert list(built.scores) == pytest.approx([0.9, 0.5, -1.0, -2.0])
    assert list(built.source_names) == ["ann", "popular"]
    assert [candidates.source_of(built, i) for i in range(4)] == ["ann", "ann", "popular", "ann"]
    head = candidates.head(built, 3)
    assert [(i.item_id, i.source) for i in head] == [("a", "ann"), ("b", "ann"), ("c", "popular")]
    assert head[0].score == pytest.approx(0.9)
    rescored = candidates.scored_items(built, [3, 0], [1.0, 2.0, 3.0, 4.0])
    assert [(i.item_id, i.score) for i in rescored] == [("d", 4.0), ("a", 1.0)]
    assert len(candidates.head(built, 10)) == 4


def test_a_block_with_more_ids_than_scores_is_refused() -> None:
    with pytest.raises(ValueError, match="2 item ids but 1 scores"):
        candidates.build([(["a", "b"], [1.0], "ann")])


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (common_pb2.Candidates(item_ids=["a", "b"], scores=[1.0]), "candidates.scores"),
        (common_pb2.Candidates(item_ids=["a"], scores=[1.0], sources=[0, 0]), "candidates.sources"),
        (
            common_pb2.Candidates(item_ids=["a"], scores=[1.0], sources=[1], source_names=["ann"]),
            "candidates.sources",
        ),
        (common_pb2.Candidates(item_ids=["a", ""], scores=[1.0, 2.0]), "candidates.item_ids[1]"),
        (common_pb2.Candidates(item_ids=["a", " \t"], scores=[1.0, 2.0]), "candidates.item_ids[1]"),
        (common_pb2.Candidates(item_ids=["x" * 257], scores=[1.0]), "candidates.item_ids[0]"),
    ],
)
def test_malformed_candidates_name_the_field(message: common_pb2.Candidates, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        candidates.validate(message)
    assert caught.value.field == field


def test_well_formed_candidates_pass() -> None:
    candidates.validate(candidates.build([(["a", "b"], [1.0, 0.0], "ann")]))
    candidates.validate(common_pb2.Candidates(item_ids=["a"], scores=[1.0]))  # sources may be left out
    candidates.validate(common_pb2.Candidates())
