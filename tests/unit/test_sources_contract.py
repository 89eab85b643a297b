"""One contract for every candidate source (services.common.sources.REGISTRY), on real data: a slice
of MovieLens latest-small. What the retrieval service serves from a source's exported files must be
what the source's definition says (tests/unit/source_references.py, dense numpy over the catalogue),
for users with and without history, with exclusions, after a save / load round trip.

A source added to the registry without a reference fails `test_every_source_has_a_reference`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.artifacts import ArtifactError, ArtifactVersion, open_version, publish, staging_dir
from services.common.sources import SOURCE_NAMES, source_class
from services.common.sources.als import Als
from services.common.sources.base import FitData, FitError, History, Source, exclusion
from services.common.sources.two_tower import TwoTower
from services.trainer.data import load
from services.trainer.universe import Universe
from tests.support import BUNDLED_DATA
from tests.unit.source_references import REFERENCES

#: Settings under which a source's export is exact (no table truncation), and quick to fit.
EXACT: dict[str, dict[str, Any]] = {
    "ease": {"neighbours": 100_000},
    "rp3": {"neighbours": 100_000},
    "seq": {"neighbours": 100_000},
    "seqease": {"neighbours": 100_000},
    "als": {"factors": 16, "iterations": 6},
    "twotower": {"dim": 16, "hidden": 32, "epochs": 4},
}
#: A setting each source refuses to fit with, and the words the error must contain.
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "ease": ({"lam": 0.0}, "lam must be > 0"),
    "cooc": ({"neighbours": 0}, "neighbours must be >= 1"),
    "rp3": ({"max_items": 1_000_000}, "too many for a dense item-item method"),
    "seq": ({"window": 0}, "window must be >= 1"),
    "seqease": ({"lam": -1.0}, "lam must be > 0"),
    "recent": ({"window": 0}, "window must be >= 1"),
    "als": ({"regularization": 0.0}, "regularization and alpha must be > 0"),
    "twotower": ({"window": 0}, "window=0: must be >= 1"),
    "content": ({}, "needs (items, d) content vectors"),
    "popular": ({"half_life_days": -1.0}, "half_life_days must be >= 0"),
}


@dataclass(frozen=True)
class Slice:
    universe: Universe
    data: FitData
    histories: dict[str, History]
    users: list[str]  # a sample with history


@functools.cache
def small_slice() -> Slice:
    """The ratings of latest-small's first 150 users on the items at least 6 of them rated."""
    dataset = load(BUNDLED_DATA)
    log = dataset.log
    users = np.isin(log.users.astype(int), np.arange(1, 151))
    sub = log.take(users)
    items, counts = np.unique(sub.items, return_counts=True)
    sub = sub.take(np.isin(sub.items, items[counts >= 6]))
    universe = Universe.build(dataset.known_from(sub), sub)
    histories = universe.histories(sub)
    return Slice(
        universe,
        universe.fit_data(sub, seed=7, threads=2),
        histories,
        sorted(histories)[:: len(histories) // 12][:12],
    )


def params(name: str, **changes: Any) -> Any:
    return dataclasses.replace(source_class(name).Params(), **{**EXACT.get(name, {}), **changes})


@functools.cache
def fitted(name: str) -> Source:
    return source_class(name).fit(small_slice().data, params(name))


def export(source: Source, root: Path, version: str = "v1") -> ArtifactVersion:
    """Publish `source` as the only part of a version (the manifest records its parameters)."""
    staging = staging_dir(root, version)
    source.save(staging)
    (staging / "item_ids.json").write_text(json.dumps(small_slice().universe.item_ids))
    manifest = {
        "pipeline": {
            "sources": [source.name],
            "source_params": {source.name: dataclasses.asdict(source.params)},
        }
    }
    publish(root, staging, version, manifest)
    return open_version(root, version)


def fitted_inputs(source: Source) -> tuple[Any, ...]:
    """What a source's reference needs of the fit itself (learned weights), beyond the data."""
    if isinstance(source, TwoTower):
        t = source.tower
        return (source.vectors, t.table, t.w1, t.b1, t.w2, t.b2)
    if isinstance(source, Als):
        return (source.vectors,)
    return ()


def user_row(user: str) -> int:
    return small_slice().universe.user_row[user]


def test_every_source_has_a_reference() -> None:
    assert set(REFERENCES) == set(SOURCE_NAMES)
    assert set(BAD) == set(SOURCE_NAMES)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_scores_are_the_reference_for_every_item(name: str) -> None:
    s = small_slice()
    source = fitted(name)
    extra = fitted_inputs(source)
    every = np.arange(s.universe.n_items)
    for user in s.users:
        expected = REFERENCES[name](s.data, user_row(user), params(name), *extra)
        got = source.scores(s.histories[user]).at(every)
        np.testing.assert_allclose(
            got, expected, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(expected).max()))
        )


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_top_is_the_best_of_the_rest_sorted_with_its_own_scores(name: str) -> None:
    s = small_slice()
    source = fitted(name)
    every = np.arange(s.universe.n_items)
    rng = np.random.default_rng(0)
    for user in s.users:
        history = s.histories[user]
        caller = rng.choice(s.universe.n_items, 40, replace=False)
        excluded = exclusion(history.as_set, caller)
        scores = source.scores(history)
        rows, values = scores.top(50, excluded)
        assert not np.isin(rows, excluded).any()  # neither the history nor the caller's exclusions
        assert len(set(rows.tolist())) == rows.size
        np.testing.assert_array_equal(values, scores.at(rows))
        assert np.all(np.diff(values) <= 0)
        # nothing left out scores higher than the last one listed (among the items the source proposes)
        rest = np.setdiff1d(every, np.concatenate([rows, excluded]))
        if rows.size == 50 and rest.size:
            assert scores.at(rest).max() <= values[-1] + 1e-6


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_user_without_history_is_answered(name: str) -> None:
    source = fitted(name)
    scores = source.scores(History.of([]))
    rows, values = scores.top(20, exclusion())
    if name == "popular":
        assert rows.size == 20 and np.all(np.diff(values) <= 0)
    else:  # a history-based source has nothing to say, and says it without failing
        assert rows.size == 0
    assert scores.at(np.arange(5)).shape == (5,)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_save_and_load_change_nothing(name: str, tmp_path: Path) -> None:
    s = small_slice()
    source = fitted(name)
    loaded = source_class(name).load(export(source, tmp_path), s.universe.n_items)
    assert loaded.params == source.params
    for user in [*s.users, "nobody"]:
        history = s.histories.get(user) or History.of([])
        excluded = exclusion(history.as_set)
        a, b = source.scores(history), loaded.scores(history)
        for (rows_a, values_a), (rows_b, values_b) in [(a.top(30, excluded), b.top(30, excluded))]:
            np.testing.assert_array_equal(rows_a, rows_b)
            np.testing.assert_array_equal(values_a, values_b)
        np.testing.assert_array_equal(a.at(np.arange(50)), b.at(np.arange(50)))


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_version_missing_a_file_of_the_source_is_refused(name: str, tmp_path: Path) -> None:
    version = export(fitted(name), tmp_path)
    own = sorted(f for f in version.manifest["files"] if f.startswith(f"{name}."))
    assert own, f"source {name} wrote no file of its own"
    files = {k: v for k, v in version.manifest["files"].items() if k != own[0]}
    broken = dataclasses.replace(version, manifest={**version.manifest, "files": files})
    with pytest.raises(ArtifactError, match=own[0].replace(".", r"\.")):
        source_class(name).load(broken, small_slice().universe.n_items)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_source_that_cannot_fit_says_which_and_why(name: str) -> None:
    changes, words = BAD[name]
    data = small_slice().data
    if name == "content":
        data = dataclasses.replace(data, content=np.zeros((3, 0), dtype=np.float32))
    with pytest.raises(FitError) as error:
        source_class(name).fit(data, params(name, **changes))
    assert str(error.value).startswith(f"source {name}: ") and words in str(error.value)


def test_a_live_click_changes_the_candidates_at_once() -> None:
    """The item-item and vector sources answer from the history itself: one new item moves them."""
    s = small_slice()
    user = s.users[0]
    history = s.histories[user]
    before = {
        n: fitted(n).scores(history).top(20, exclusion(history.as_set))[0]
        for n in ("ease", "recent", "als", "twotower")
    }
    clicked = before["ease"][0]
    after_history = History.of(np.concatenate([[clicked], history.items]))
    for name, rows in before.items():
        now = fitted(name).scores(after_history).top(20, exclusion(after_history.as_set))[0]
        assert clicked not in now and not np.array_equal(now, rows), name


def test_tables_keep_each_rows_strongest_links(tmp_path: Path) -> None:
    """Truncated to `neighbours` per item, a table keeps the weights of largest magnitude, negative ones
    (EASE's) included."""
    full = fitted("ease").table  # type: ignore[attr-defined]
    cut = source_class("ease").fit(small_slice().data, params("ease", neighbours=30)).table  # type: ignore[attr-defined]
    for row in range(0, full.n_rows, 97):
        a, b = slice(full.indptr[row], full.indptr[row + 1]), slice(cut.indptr[row], cut.indptr[row + 1])
        strongest = np.sort(np.abs(full.weights[a]))[::-1][:30]
        np.testing.assert_allclose(np.sort(np.abs(cut.weights[b]))[::-1], strongest, rtol=1e-6)


def test_fold_in_recovers_the_vectors_als_learned(tmp_path: Path) -> None:
    """A fitted user's folded-in scores rank items as ALS's own user factors do."""
    from implicit.cpu.als import AlternatingLeastSquares

    s = small_slice()
    p = params("als")
    model = AlternatingLeastSquares(
        factors=p.factors,
        regularization=p.regularization,
        alpha=p.alpha,
        iterations=p.iterations,
        random_state=s.data.seed,
        num_threads=2,
    )
    model.fit(s.data.matrix, show_progress=False)
    source = fitted("als")
    np.testing.assert_allclose(source.vectors, model.item_factors, rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]
    every = np.arange(s.universe.n_items)
    for user in s.users:
        learned = model.item_factors @ model.user_factors[user_row(user)]
        folded = source.scores(s.histories[user]).at(every)
        assert np.corrcoef(learned, folded)[0, 1] > 0.98


def test_every_registered_name_is_its_class_name() -> None:
    for name in SOURCE_NAMES:
        assert source_class(name).name == name
    with pytest.raises(KeyError, match="unknown source 'bm25'"):
        source_class("bm25")
