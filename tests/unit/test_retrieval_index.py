"""The item index adapter on a real FAISS index over real MovieLens latest-small vectors."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from services.common.artifacts import ArtifactError, open_version
from services.retrieval.index import ItemIndex
from tests.unit.retrieval_fixtures import SmallModel, small_model, write_version


@pytest.fixture(scope="module")
def model() -> SmallModel:
    return small_model()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("retrieval-index-artifacts")


@pytest.fixture(scope="module")
def index(root: Path, model: SmallModel) -> ItemIndex:
    write_version(root, "flat", model)
    return ItemIndex.load(open_version(root, "flat"))


def brute_force(
    model: SmallModel, query: npt.NDArray[np.float32], exclude: npt.NDArray[np.int64] | None = None
) -> npt.NDArray[np.float32]:
    """Exact inner products with every item; excluded rows get -inf."""
    scores = (model.item_embeddings @ query).astype(np.float32)
    if exclude is not None:
        scores[exclude] = -np.inf
    return scores


def assert_exact_top(
    rows: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], exact: npt.NDArray[np.float32], n: int
) -> None:
    """`rows` are an exact top-n of `exact`, best first (ties at the boundary may swap equal items)."""
    expected = np.sort(exact)[::-1][:n]
    expected = expected[np.isfinite(expected)]
    assert len(rows) == len(expected)
    assert len(set(rows.tolist())) == len(rows)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(exact[rows], scores, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores) <= 1e-6)


def test_loads_the_version(index: ItemIndex, model: SmallModel) -> None:
    assert index.version == "flat"
    assert index.size == len(model.item_ids) == 9724
    assert index.dim == model.item_embeddings.shape[1]
    assert index.ids_of(np.arange(3, dtype=np.int64)) == model.item_ids[:3]


@pytest.mark.parametrize("n", [1, 10, 500, 2000])
def test_ann_equals_brute_force(index: ItemIndex, model: SmallModel, n: int) -> None:
    for user in (0, 17, 300, 609):
        query = model.user_embeddings[user]
        rows, scores = index.search(query, n)
        assert_exact_top(rows, scores, brute_force(model, query), n)


def test_exclusion_is_exact(index: ItemIndex, model: SmallModel) -> None:
    rng = np.random.default_rng(1)
    query = model.user_embeddings[5]
    # exclude the unfiltered best half of the answer plus random others: the rest must move up
    top, _ = index.search(query, 500)
    exclude = np.concatenate([top[::2], rng.choice(index.size, 3000, replace=False)])
    rows, scores = index.search(query, 500, exclude)
    assert not np.isin(rows, exclude).any()
    assert_exact_top(rows, scores, brute_force(model, query, exclude), 500)


@pytest.mark.parametrize("keep", [0, 1, 37, 499, 800])
def test_excluding_most_of_the_catalogue(index: ItemIndex, model: SmallModel, keep: int) -> None:
    rng = np.random.default_rng(keep)
    kept = rng.choice(index.size, keep, replace=False)
    exclude = np.setdiff1d(np.arange(index.size), kept)
    query = model.user_embeddings[42]
    rows, scores = index.search(query, 500, exclude)
    assert len(rows) == min(500, keep)
    assert set(rows.tolist()) <= set(kept.tolist())
    assert_exact_top(rows, scores, brute_force(model, query, exclude), 500)


def test_overfetch_fallback_matches_selector(index: ItemIndex, model: SmallModel, root: Path) -> None:
    """Index types whose search takes no selector over-fetch and mask: same answer as the filtered path."""
    other = ItemIndex.load(open_version(root, "flat"))
    other._filtered = False
    rng = np.random.default_rng(7)
    for excluded in (0, 10, 5000, 9700):
        exclude = rng.choice(index.size, excluded, replace=False).astype(np.int64)
        query = model.user_embeddings[excluded % 600]
        rows, scores = other.search(query, 300, exclude)
        assert not np.isin(rows, exclude).any()
        assert_exact_top(rows, scores, brute_force(model, query, exclude), 300)


@pytest.mark.parametrize(("spec", "nprobe"), [("IVF64,Flat", 8), ("HNSW16", 0)])
def test_approximate_indexes_respect_exclusions(
    tmp_path: Path, model: SmallModel, spec: str, nprobe: int
) -> None:
    write_version(tmp_path, "approx", model, index_spec=spec, nprobe=nprobe)
    approx = ItemIndex.load(open_version(tmp_path, "approx"))
    assert approx._filtered  # IVF and HNSW take a selector (with their own nprobe / efSearch)
    rng = np.random.default_rng(3)
    recalls = []
    for user in range(0, 600, 60):
        query = model.user_embeddings[user]
        exclude = rng.choice(approx.size, 4000, replace=False).astype(np.int64)
        rows, _ = approx.search(query, 100, exclude)
        assert len(rows) > 0
        assert not np.isin(rows, exclude).any()
        assert (rows >= 0).all() and len(set(rows.tolist())) == len(rows)
        exact = brute_force(model, query, exclude)
        recalls.append(len(np.intersect1d(rows, np.argsort(-exact)[:100])) / 100)
    assert np.mean(recalls) > 0.5, recalls


def test_popular(index: ItemIndex, model: SmallModel) -> None:
    top = index.popular(10)
    assert index.ids_of(top) == model.popular[:10]
    exclude = index.rows_of(model.popular[:5] + model.popular[7:8])
    assert index.ids_of(index.popular(4, exclude)) == [model.popular[i] for i in (5, 6, 8, 9)]
    everything = index.popular(index.size + 10)
    assert sorted(everything.tolist()) == list(range(index.size))
    assert index.popular(0).size == 0


def test_popular_completes_with_the_rest_of_the_catalogue(tmp_path: Path, model: SmallModel) -> None:
    short = SmallModel(**{**vars(model), "popular": model.popular[:100]})
    write_version(tmp_path, "short", short)
    item_index = ItemIndex.load(open_version(tmp_path, "short"))
    rows = item_index.popular(500, item_index.rows_of(model.popular[:50]))
    assert len(rows) == 500 and len(set(rows.tolist())) == 500
    assert item_index.ids_of(rows[:50]) == model.popular[50:100]


def test_fold_in(index: ItemIndex, model: SmallModel) -> None:
    recent = model.history["1"][:20]
    rows = index.rows_of([*recent, "no-such-item", ""])
    assert index.ids_of(rows) == recent  # unknown ids are dropped, order kept
    vector = index.fold_in(rows)
    assert vector is not None
    expected = model.item_embeddings[[model.item_ids.index(i) for i in recent]].mean(axis=0)
    np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)
    assert index.fold_in(index.rows_of(["no-such-item"])) is None
    found, _ = index.search(vector, 50, rows)
    assert len(found) == 50 and not np.isin(found, rows).any()


def test_bad_query_vector_is_refused(index: ItemIndex) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.zeros(index.dim + 1, np.float32), 10)


def flat(vectors: npt.NDArray[np.float32]) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def test_shape_mismatches_are_refused(model: SmallModel) -> None:
    vectors, ids = model.item_embeddings, model.item_ids
    with pytest.raises(ArtifactError, match=r"row counts disagree: item_index.faiss holds 100 vectors"):
        ItemIndex(flat(vectors[:100]), ids, vectors, model.popular)
    with pytest.raises(ArtifactError, match=r"item_ids.json lists 9723 items"):
        ItemIndex(flat(vectors), ids[:-1], vectors, [])
    with pytest.raises(ArtifactError, match=r"item_embeddings.npy has 9723 rows"):
        ItemIndex(flat(vectors), ids, vectors[:-1], [])
    with pytest.raises(
        ArtifactError, match=r"dimensions disagree: item_index.faiss is 32-d, item_embeddings.npy is 16-d"
    ):
        ItemIndex(flat(vectors), ids, np.ascontiguousarray(vectors[:, :16]), [])
    with pytest.raises(ArtifactError, match="lists no items"):
        ItemIndex(faiss.IndexFlatIP(vectors.shape[1]), [], vectors[:0], [])
    l2 = faiss.IndexFlatL2(vectors.shape[1])
    l2.add(vectors)
    with pytest.raises(ArtifactError, match="inner product"):
        ItemIndex(l2, ids, vectors, [])
    with pytest.raises(ArtifactError, match="duplicate"):
        ItemIndex(flat(vectors[:3]), ["a", "b", "a"], vectors[:3], [])
    with pytest.raises(
        ArtifactError, match=r"popular.json names 1 items missing from item_ids.json, e.g. 'zzz'"
    ):
        ItemIndex(flat(vectors), ids, vectors, [*model.popular[:3], "zzz"])


def test_inconsistent_version_is_refused_at_load(tmp_path: Path, model: SmallModel) -> None:
    write_version(tmp_path, "short-index", model, index_rows=9000)
    version = open_version(tmp_path, "short-index")  # every checksum matches: only the shapes are wrong
    with pytest.raises(ArtifactError, match=r"artifact short-index: row counts disagree"):
        ItemIndex.load(version)


def test_unreadable_files_are_refused_at_load(tmp_path: Path, model: SmallModel) -> None:
    version = write_version(tmp_path, "bad-ids", model)
    (version.path / "item_ids.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ArtifactError, match=r"item_ids\.json must be a JSON list"):
        ItemIndex.load(version)
    (version.path / "item_ids.json").write_text(json.dumps(model.item_ids))
    (version.path / "item_index.faiss").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"cannot read item_index\.faiss"):
        ItemIndex.load(version)


def test_exclusion_bitmap_clears_exactly_the_excluded_rows(index: ItemIndex) -> None:
    rng = np.random.default_rng(5)
    for excluded in (np.array([], dtype=np.int64), rng.integers(0, index.size, 40), np.arange(index.size)):
        bitmap, allowed = index._allowed_bitmap(excluded)  # duplicates in `excluded` count once
        expected = np.ones(index.size, dtype=bool)
        expected[excluded] = False
        assert np.array_equal(bitmap, np.packbits(expected, bitorder="little"))
        assert allowed == int(expected.sum())
