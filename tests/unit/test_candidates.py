"""The columnar Candidates message: fused candidates to a message and back (the float32 columns retrieval
writes are the ones ranking reads), validated, turned into ScoredItems."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from recsys.v1 import common_pb2
from services.common import candidates
from services.common.fusion import CandidateColumns, SourceColumn
from services.common.rpc import InvalidArgument

NAN = math.nan
#: the catalogue of the reading and writing side alike: row r is item "i<r>"
ITEM_IDS: npt.NDArray[np.object_] = np.array([f"i{r}" for r in range(10)], dtype=object)


def f32(*values: float) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def sample() -> CandidateColumns:
    """Four candidates from two fused sources and a popular top-up; values float64 cannot hold exactly
    as written (0.1, 1/3), NaN ranks where a source did not list a candidate, and a source that listed
    nothing (best NaN). A best score is one of the source's float32 scores, as services.common.fusion
    makes it."""
    return CandidateColumns(
        rows=np.array([7, 2, 9, 0], dtype=np.int64),
        fused=f32(1 / 61 + 1 / 62, 1 / 61, 1 / 63, -1.0),
        origin=["ease", "als", "ease", "popular"],
        columns={
            "ease": SourceColumn(f32(0.1, 1 / 3, -2.5e-7, 0.0), f32(0, NAN, 1, NAN), float(np.float32(0.1))),
            "als": SourceColumn(f32(3.25, 7.0, 1e-30, -1e30), f32(1, 0, NAN, NAN), 7.0),
            "seq": SourceColumn(f32(0, 0, 0, 0), f32(NAN, NAN, NAN, NAN), NAN),
            "popular": SourceColumn(f32(12, 40, 3, 329), f32(NAN, NAN, NAN, 0), 329.0),
        },
    )


def wire_round_trip(message: common_pb2.Candidates) -> common_pb2.Candidates:
    return common_pb2.Candidates.FromString(message.SerializeToString())


def test_columns_survive_the_wire_exactly() -> None:
    sent = sample()
    message = candidates.to_proto(sent, ITEM_IDS)
    assert list(message.item_ids) == ["i7", "i2", "i9", "i0"]
    assert list(message.source_names) == ["ease", "als", "popular"]  # distinct, first proposed first
    assert list(message.sources) == [0, 1, 0, 2]
    assert [c.source for c in message.columns] == ["ease", "als", "seq", "popular"]
    candidates.validate(message)
    rows = np.array([7, 2, 9, 0], dtype=np.int64)
    got = candidates.from_proto(wire_round_trip(message), rows)
    assert got.rows is rows and len(got) == 4
    assert got.fused.dtype == np.float32
    np.testing.assert_array_equal(got.fused, sent.fused)  # bit for bit: float32 on both sides
    assert got.origin == sent.origin
    assert list(got.columns) == list(sent.columns)
    for name, column in sent.columns.items():
        back = got.columns[name]
        assert back.scores.dtype == back.ranks.dtype == np.float32
        np.testing.assert_array_equal(back.scores, column.scores, err_msg=name)
        np.testing.assert_array_equal(back.ranks, column.ranks, err_msg=name)  # NaN where NaN
        assert np.isnan(back.ranks).tolist() == np.isnan(column.ranks).tolist()
        if math.isnan(column.best):
            assert math.isnan(back.best), name
        else:
            assert back.best == column.best, name


def test_an_empty_candidate_list() -> None:
    empty = CandidateColumns(
        np.empty(0, np.int64),
        f32(),
        [],
        {"als": SourceColumn(f32(), f32(), NAN)},
    )
    message = candidates.to_proto(empty, ITEM_IDS)
    candidates.validate(message)
    assert len(message.item_ids) == 0 and not message.source_names and not message.sources
    assert [c.source for c in message.columns] == ["als"]
    got = candidates.from_proto(wire_round_trip(message), np.empty(0, np.int64))
    assert len(got) == 0 and got.origin == [] and list(got.columns) == ["als"]
    assert candidates.head(message, 5) == []
    # a message without source indices or columns (a caller may leave them out) reads as well
    bare = candidates.from_proto(common_pb2.Candidates(item_ids=["a"], scores=[0.5]), np.zeros(1, np.int64))
    assert bare.origin == [""] and bare.columns == {}


def test_head_and_scored_items() -> None:
    message = candidates.to_proto(sample(), ITEM_IDS)
    assert [candidates.source_of(message, i) for i in range(4)] == ["ease", "als", "ease", "popular"]
    head = candidates.head(message, 3)
    assert [(i.item_id, i.source) for i in head] == [("i7", "ease"), ("i2", "als"), ("i9", "ease")]
    assert head[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert len(candidates.head(message, 10)) == 4
    assert candidates.head(message, 0) == []
    rescored = candidates.scored_items(message, [3, 0], [1.0, 2.0, 3.0, 4.0])
    assert [(i.item_id, i.score, i.source) for i in rescored] == [("i0", 4.0, "popular"), ("i7", 1.0, "ease")]
    own = candidates.scored_items(message, [3])
    assert own[0].score == -1.0
    unsourced = common_pb2.Candidates(item_ids=["a", "b"], scores=[1.0, 0.5])
    assert [(i.item_id, i.source) for i in candidates.head(unsourced, 2)] == [("a", ""), ("b", "")]


def column(source: str, scores: list[float], ranks: list[float]) -> common_pb2.SourceColumn:
    return common_pb2.SourceColumn(source=source, scores=scores, ranks=ranks)


def two(*columns: common_pb2.SourceColumn) -> common_pb2.Candidates:
    """Two well-formed candidates with `columns`."""
    return common_pb2.Candidates(
        item_ids=["a", "b"], scores=[1.0, 0.5], source_names=["ease"], sources=[0, 0], columns=columns
    )


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
        (two(column("ease", [1.0], [0.0, 1.0])), "candidates.columns[0].scores"),
        (two(column("ease", [1.0, 2.0, 3.0], [0.0, 1.0])), "candidates.columns[0].scores"),
        (
            two(column("ease", [1.0, 2.0], [0.0, 1.0]), column("als", [1.0, 2.0], [NAN])),
            "candidates.columns[1].ranks",
        ),
        (two(column("ease", [1.0, 2.0], [])), "candidates.columns[0].ranks"),
        (two(column("", [1.0, 2.0], [0.0, 1.0])), "candidates.columns[0].source"),
        (
            two(column("ease", [1.0, 2.0], [0.0, 1.0]), column("ease", [3.0, 4.0], [NAN, NAN])),
            "candidates.columns[1].source",
        ),
    ],
)
def test_malformed_candidates_name_the_field(message: common_pb2.Candidates, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        candidates.validate(message)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_the_field_is_named_under_the_callers_prefix() -> None:
    with pytest.raises(InvalidArgument) as caught:
        candidates.validate(two(column("als", [1.0], [0.0, 1.0])), "rank.candidates")
    assert caught.value.field == "rank.candidates.columns[0].scores"


def test_well_formed_candidates_pass() -> None:
    candidates.validate(candidates.to_proto(sample(), ITEM_IDS))
    candidates.validate(two(column("ease", [1.0, 2.0], [0.0, NAN]), column("als", [NAN, 0.0], [NAN, NAN])))
    candidates.validate(common_pb2.Candidates(item_ids=["a"], scores=[1.0]))  # sources may be left out
    candidates.validate(common_pb2.Candidates())
