"""The ranker's shared feature schema and `assemble` (services.common.ranker_features), on hand-made
candidates whose every feature value is worked out here by hand."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from services.common import ranker_features as rf
from services.common.fusion import CandidateColumns, SourceColumn

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
NAN = math.nan
SOURCES = ("ease", "als", "cooc")
N = 4
N_ITEM, N_USER = len(rf.ITEM_FEATURES), len(rf.USER_FEATURES)


def f32(*values: float) -> F32:
    return np.array(values, dtype=np.float32)


def candidates(columns: dict[str, SourceColumn] | None = None) -> CandidateColumns:
    """Four candidates in fused order, seen by ease and als; cooc did not run for this request."""
    if columns is None:
        columns = {
            # ranks: ease did not list the third candidate (past its depth)
            "ease": SourceColumn(f32(4.0, 2.0, 1.0, -3.0), f32(0.0, 2.0, NAN, 5.0), 8.0),
            # a negative best: the ratio divides by its magnitude
            "als": SourceColumn(f32(-0.5, -1.0, -1.5, -2.0), f32(1.0, 0.0, 3.0, 2.0), -0.25),
        }
    return CandidateColumns(
        np.array([10, 11, 12, 13], dtype=np.int64),
        f32(0.05, 0.04, 0.03, 0.02),
        ["ease", "als", "popular", "ease"],
        columns,
    )


def item_rows() -> F64:
    """Distinct values per candidate and column; the last candidate is an item without a row."""
    rows = np.arange(N * len(rf.ITEM_FEATURES), dtype=np.float64).reshape(N, -1) / 7.0
    rows[3] = np.nan
    return rows


def user_row() -> F64:
    return 100.0 + np.arange(len(rf.USER_FEATURES), dtype=np.float64) * 1.5


def column(matrix: F32, name: str, sources: tuple[str, ...] = SOURCES) -> F32:
    out: F32 = matrix[:, rf.ranker_features(sources).index(name)]
    return out


def close(actual: F32, expected: object) -> None:
    """float32 output against float64 hand values; NaN where expected is NaN."""
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=1e-6, atol=1e-6)


# --- the schema ---------------------------------------------------------------------------------------


def test_names_are_three_per_source_in_source_order_then_fused_item_user_and_cross() -> None:
    names = rf.ranker_features(["ease", "als"])
    assert names[:7] == [
        "ease_log_rank",
        "ease_score_ratio",
        "ease_list_z",
        "als_log_rank",
        "als_score_ratio",
        "als_list_z",
        "fused_log_rank",
    ]
    assert names[7:] == [*rf.ITEM_FEATURES, *rf.USER_FEATURES, *rf.CROSS_FEATURES]
    assert rf.ranker_features(["als", "ease"])[:3] == ["als_log_rank", "als_score_ratio", "als_list_z"]
    assert rf.ranker_features([]) == [
        "fused_log_rank",
        *rf.ITEM_FEATURES,
        *rf.USER_FEATURES,
        *rf.CROSS_FEATURES,
    ]
    assert rf.SOURCE_FEATURES == ("log_rank", "score_ratio", "list_z")


def test_no_name_appears_twice() -> None:
    names = rf.ranker_features(SOURCES)
    width = 3 * len(SOURCES) + 1 + len(rf.ITEM_FEATURES) + len(rf.USER_FEATURES) + len(rf.CROSS_FEATURES)
    assert len(names) == len(set(names)) == width
    assert all(n.startswith("item_") for n in rf.ITEM_FEATURES)
    assert all(n.startswith("user_") for n in rf.USER_FEATURES)


# --- assemble -----------------------------------------------------------------------------------------


def test_the_matrix_is_float32_one_row_per_candidate_one_column_per_name() -> None:
    matrix = rf.assemble(SOURCES, user_row(), item_rows(), candidates())
    assert matrix.dtype == np.float32
    assert matrix.shape == (N, len(rf.ranker_features(SOURCES)))
    empty = CandidateColumns(np.empty(0, np.int64), f32(), [], {})
    assert rf.assemble(SOURCES, user_row(), np.empty((0, len(rf.ITEM_FEATURES))), empty).shape == (
        0,
        len(rf.ranker_features(SOURCES)),
    )


def test_log_rank_is_log1p_of_the_rank_and_nan_past_the_sources_depth() -> None:
    matrix = rf.assemble(SOURCES, user_row(), item_rows(), candidates())
    close(column(matrix, "ease_log_rank"), [0.0, math.log(3.0), NAN, math.log(6.0)])
    close(column(matrix, "als_log_rank"), [math.log(2.0), 0.0, math.log(4.0), math.log(3.0)])
    # the fused rank is the candidate's position, whatever its fused score
    close(column(matrix, "fused_log_rank"), [0.0, math.log(2.0), math.log(3.0), math.log(4.0)])


def test_score_ratio_divides_by_the_magnitude_of_the_users_best_score() -> None:
    matrix = rf.assemble(SOURCES, user_row(), item_rows(), candidates())
    close(column(matrix, "ease_score_ratio"), [0.5, 0.25, 0.125, -0.375])
    close(column(matrix, "als_score_ratio"), [-2.0, -4.0, -6.0, -8.0])
    # a best of 0 divides by 1e-6; a source that listed nothing (NaN best) has no ratio
    zero = {"ease": SourceColumn(f32(1e-6, 0.0, -2e-6, 0.0), f32(0, 1, 2, 3), 0.0)}
    close(
        column(rf.assemble(SOURCES, user_row(), item_rows(), candidates(zero)), "ease_score_ratio"),
        [1, 0, -2, 0],
    )
    nothing = {"ease": SourceColumn(f32(1.0, 2.0, 3.0, 4.0), f32(NAN, NAN, NAN, NAN), NAN)}
    matrix = rf.assemble(SOURCES, user_row(), item_rows(), candidates(nothing))
    assert np.isnan(column(matrix, "ease_score_ratio")).all()
    assert np.isnan(column(matrix, "ease_log_rank")).all()


def test_list_z_is_the_z_score_within_the_candidate_list() -> None:
    matrix = rf.assemble(SOURCES, user_row(), item_rows(), candidates())
    # ease scores 4, 2, 1, -3: mean 1, population variance (9 + 1 + 0 + 16) / 4 = 6.5
    close(column(matrix, "ease_list_z"), np.array([3.0, 1.0, 0.0, -4.0]) / math.sqrt(6.5))
    # als -0.5 .. -2 by 0.5: mean -1.25, variance (0.5625 + 0.0625) * 2 / 4 = 0.3125
    close(column(matrix, "als_list_z"), np.array([0.75, 0.25, -0.25, -0.75]) / math.sqrt(0.3125))
    # a source scoring every candidate alike: 0, not a division by zero
    flat = {"ease": SourceColumn(f32(2.0, 2.0, 2.0, 2.0), f32(0, 1, 2, 3), 2.0)}
    close(
        column(rf.assemble(SOURCES, user_row(), item_rows(), candidates(flat)), "ease_list_z"), [0, 0, 0, 0]
    )


def test_a_source_without_a_column_gives_nan_for_its_three_features() -> None:
    matrix = rf.assemble(SOURCES, user_row(), item_rows(), candidates())
    for feature in rf.SOURCE_FEATURES:
        assert np.isnan(column(matrix, f"cooc_{feature}")).all(), feature
        assert np.isfinite(column(matrix, f"als_{feature}")).all(), feature
    # a column of a source the version does not have is ignored; each source's block is where its name is
    columns = {**candidates().columns, "extra": SourceColumn(f32(9, 9, 9, 9), f32(0, 1, 2, 3), 9.0)}
    reordered = rf.assemble(("cooc", "als", "ease"), user_row(), item_rows(), candidates(columns))
    for feature in rf.SOURCE_FEATURES:
        name = f"ease_{feature}"
        np.testing.assert_array_equal(
            column(reordered, name, ("cooc", "als", "ease")), column(matrix, name), err_msg=name
        )
    assert reordered.shape == matrix.shape


def test_item_and_user_rows_are_copied_and_an_empty_user_is_nan() -> None:
    items, user = item_rows(), user_row()
    names = rf.ranker_features(SOURCES)
    first_item, first_user = names.index(rf.ITEM_FEATURES[0]), names.index(rf.USER_FEATURES[0])
    matrix = rf.assemble(SOURCES, user, items, candidates())
    np.testing.assert_array_equal(
        matrix[:, first_item : first_item + len(rf.ITEM_FEATURES)], items.astype(np.float32)
    )
    np.testing.assert_array_equal(
        matrix[:, first_user : first_user + len(rf.USER_FEATURES)], np.tile(user.astype(np.float32), (N, 1))
    )
    cold = rf.assemble(SOURCES, np.empty(0, np.float32), items, candidates())
    assert np.isnan(cold[:, first_user : first_user + len(rf.USER_FEATURES)]).all()
    assert np.isnan(cold[:, names.index(rf.CROSS_FEATURES[0]) :]).all()  # every cross feature needs the user
    np.testing.assert_array_equal(cold[:, :first_user], matrix[:, :first_user])


def test_each_cross_feature_is_its_gap_between_item_and_user_statistics() -> None:
    items = np.full((3, len(rf.ITEM_FEATURES)), NAN)
    user = np.full(len(rf.USER_FEATURES), NAN)

    def set_item(name: str, *values: float) -> None:
        items[:, rf.ITEM_FEATURES.index(name)] = values

    def set_user(name: str, value: float) -> None:
        user[rf.USER_FEATURES.index(name)] = value

    set_item("item_log_pop", 2.0, 0.5, 3.25)
    set_user("user_mean_item_pop", 1.0)
    set_item("item_year", 1995.0, 2010.0, NAN)
    set_user("user_mean_item_year", 2000.0)
    set_item("item_bayes_rating", 4.5, 3.0, 2.0)
    set_item("item_mean_rating", 1.0, 1.0, 1.0)  # not the one compared
    set_user("user_mean_rating", 3.5)
    set_item("item_rater_age", 30.0, 41.0, 25.0)
    set_user("user_age", 35.0)
    set_item("item_mean_hour", 23.0, 10.0, 0.0)
    set_user("user_mean_hour", 1.0)
    set_item("item_days_since_first", 400.0, 50.0, 10.0)
    set_item("item_days_since_last", 3.0, 20.0, 1.0)
    set_user("user_days_since_first", 200.0)
    set_user("user_days_since_last", 30.0)
    three = CandidateColumns(np.arange(3, dtype=np.int64), f32(3, 2, 1), ["", "", ""], {})
    matrix = rf.assemble(SOURCES, user, items, three)
    expected = {
        "pop_vs_user": [1.0, -0.5, 2.25],
        "year_vs_user": [-5.0, 10.0, NAN],
        "rating_vs_user": [1.0, -0.5, -1.5],
        "rater_age_vs_user": [-5.0, 6.0, -10.0],
        "hour_gap": [2.0, 9.0, 1.0],  # around the clock: 23h and 1h are 2 hours apart
        "item_last_vs_user_last_days": [27.0, 10.0, 29.0],
        "item_first_vs_user_last_days": [-370.0, -20.0, 20.0],
        "user_first_vs_item_last_days": [-197.0, -180.0, -199.0],
    }
    assert list(expected) == list(rf.CROSS_FEATURES)
    for name, values in expected.items():
        np.testing.assert_allclose(column(matrix, name), values, rtol=1e-6, err_msg=name)
    set_user("user_mean_hour", 12.0)
    gap = column(rf.assemble(SOURCES, user, items, three), "hour_gap")
    np.testing.assert_allclose(gap, [11.0, 2.0, 12.0], rtol=1e-6)  # 12 hours is the farthest apart


@pytest.mark.parametrize(
    ("user", "items", "message"),
    [
        (user_row(), item_rows()[:3], rf"item_values: expected shape \(4, {N_ITEM}\), got \(3, {N_ITEM}\)"),
        (user_row(), item_rows()[:, :5], rf"item_values: expected shape \(4, {N_ITEM}\), got \(4, 5\)"),
        (user_row(), item_rows()[0], rf"item_values: expected shape \(4, {N_ITEM}\), got \({N_ITEM},\)"),
        (user_row()[:-1], item_rows(), f"user_values: expected {N_USER} values, got {N_USER - 1}"),
        (np.zeros(N_USER + 1), item_rows(), f"user_values: expected {N_USER} values, got {N_USER + 1}"),
    ],
)
def test_shape_errors_name_the_argument(user: F64, items: F64, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rf.assemble(SOURCES, user, items, candidates())
