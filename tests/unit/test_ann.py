"""services.common.ann (the one FAISS index builder, and search with exclusions) on real FAISS indexes
over real vectors: a truncated SVD of the bundled MovieLens latest-small rating matrix (items = V sqrt(s),
users = U sqrt(s), so user . item approximates a rating), compared with exact numpy inner products."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import svds

from services.common import ann
from services.common.ann import VectorIndex, build_index
from tests.support import BUNDLED_DATA

F32 = npt.NDArray[np.float32]
Rows = npt.NDArray[np.int64]

DIM = 32
RECALL_TARGET = 0.95
K = 100


@dataclass(frozen=True)
class Vectors:
    items: F32  # (9724, DIM)
    users: F32  # (610, DIM): real queries


@functools.cache
def movielens() -> Vectors:
    raw = np.loadtxt(BUNDLED_DATA / "ratings.csv", delimiter=",", skiprows=1, usecols=(0, 1, 2))
    users, user_rows = np.unique(raw[:, 0].astype(np.int64), return_inverse=True)
    items, item_rows = np.unique(raw[:, 1].astype(np.int64), return_inverse=True)
    matrix = csr_matrix((raw[:, 2], (user_rows, item_rows)), shape=(users.size, items.size))
    u, s, vt = svds(matrix, k=DIM, random_state=0)
    root = np.sqrt(s)
    return Vectors(
        np.ascontiguousarray((vt.T * root).astype(np.float32)),
        np.ascontiguousarray((u * root).astype(np.float32)),
    )


@pytest.fixture(scope="module")
def vectors() -> Vectors:
    return movielens()


@pytest.fixture(scope="module")
def flat(vectors: Vectors) -> VectorIndex:
    index, info = build_index(vectors.items)
    assert info == {"type": "flat"}
    return VectorIndex(index, vectors.items.shape[0])


def exact_scores(items: F32, query: F32, exclude: Rows | None = None) -> npt.NDArray[np.float64]:
    """Exact inner products with every item (float64); excluded rows get -inf."""
    scores = items.astype(np.float64) @ query.astype(np.float64)
    if exclude is not None:
        scores[exclude] = -np.inf
    return scores


def assert_exact_top(rows: Rows, items: F32, query: F32, n: int, exclude: Rows | None = None) -> None:
    """`rows` are an exact top n of the items not excluded, best first (ties may swap equal items)."""
    exact = exact_scores(items, query, exclude)
    expected = np.sort(exact)[::-1][:n]
    expected = expected[np.isfinite(expected)]
    assert rows.dtype == np.int64
    assert len(rows) == len(expected)
    assert len(set(rows.tolist())) == len(rows), "rows must be distinct"
    if exclude is not None:
        assert not np.isin(rows, exclude).any(), "an excluded row came back"
    got = exact[rows]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(got) <= 1e-4), "not best first"


def recall_at(index: Any, items: F32, queries: F32, k: int) -> float:
    """Share of the exact (numpy) top k that `index` finds, averaged over `queries`."""
    _, found = index.search(np.ascontiguousarray(queries), k)
    truth = np.argsort(-(queries.astype(np.float64) @ items.astype(np.float64).T), axis=1)[:, :k]
    return float(np.mean([np.intersect1d(f, t).size / k for f, t in zip(found, truth, strict=True)]))


def random_exclusion(rng: np.random.Generator, size: int, count: int) -> Rows:
    out: Rows = np.sort(rng.choice(size, count, replace=False)).astype(np.int64)
    return out


# --- build_index ------------------------------------------------------------------------------------


def test_exact_search_below_the_threshold(vectors: Vectors) -> None:
    n = vectors.items.shape[0]
    assert n < ann.ANN_THRESHOLD
    for kind in ("auto", "flat"):
        index, info = build_index(vectors.items, kind, queries=vectors.users)
        assert isinstance(index, faiss.IndexFlatIP) and info == {"type": "flat"}
        assert int(index.ntotal) == n and int(index.d) == DIM
        assert ann.recall(index, vectors.items, vectors.users[:50], K) == 1.0
    # the same catalogue above a lower threshold gets an approximate index
    index, info = build_index(vectors.items, threshold=n)
    assert isinstance(index, faiss.IndexIVFFlat) and info["type"].startswith("ivf")
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        build_index(vectors.items, "lsh")


def test_ivf_reaches_the_recall_target_with_the_reported_nprobe(vectors: Vectors) -> None:
    tuning, held_out = vectors.users[:300], vectors.users[300:]
    index, info = build_index(
        vectors.items, "ivf", queries=tuning, k=K, recall_target=RECALL_TARGET, threshold=0
    )
    assert isinstance(index, faiss.IndexIVFFlat)
    assert int(index.metric_type) == faiss.METRIC_INNER_PRODUCT and int(index.ntotal) == len(vectors.items)
    nlist = int(4 * np.sqrt(len(vectors.items)))
    assert info["type"] == f"ivf{nlist},flat" and int(index.nlist) == nlist
    assert info["queries"] == len(tuning)
    nprobe = int(info["nprobe"])
    assert nprobe == int(index.nprobe) and nprobe & (nprobe - 1) == 0  # a power of two
    assert 1 < nprobe < nlist  # these vectors need some probing, not all of it
    # the reported recall is the recall against exact search, and it reaches the target
    measured = recall_at(index, vectors.items, tuning, K)
    assert info[f"recall@{K}"] >= RECALL_TARGET
    assert measured == pytest.approx(info[f"recall@{K}"], abs=2e-3)
    assert recall_at(index, vectors.items, held_out, K) >= RECALL_TARGET - 0.05
    # the smallest such nprobe: half of it misses the target
    index.nprobe = nprobe // 2
    assert recall_at(index, vectors.items, tuning, K) < RECALL_TARGET


def test_ivf_without_queries_probes_a_fixed_number_of_lists(vectors: Vectors) -> None:
    index, info = build_index(vectors.items, "ivf")
    assert info["nprobe"] == int(index.nprobe) == min(int(index.nlist), 32)
    assert f"recall@{K}" not in info


def test_hnsw_reports_its_recall(vectors: Vectors) -> None:
    queries = vectors.users[:200]
    index, info = build_index(vectors.items, "hnsw", queries=queries, k=K)
    assert isinstance(index, faiss.IndexHNSWFlat)
    assert info["type"] == "hnsw" and info["efSearch"] == int(index.hnsw.efSearch)
    assert info["M"] == 32
    assert info[f"recall@{K}"] == pytest.approx(recall_at(index, vectors.items, queries, K), abs=2e-3)
    assert info[f"recall@{K}"] > 0.9
    _, without_queries = build_index(vectors.items, "hnsw")
    assert f"recall@{K}" not in without_queries


# --- VectorIndex.search -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 10, 500, 2000])
def test_search_equals_exact_search(flat: VectorIndex, vectors: Vectors, n: int) -> None:
    assert flat.dim == DIM and flat.size == len(vectors.items)
    for user in (0, 17, 300, 609):
        query = vectors.users[user]
        assert_exact_top(flat.search(query, n, np.empty(0, dtype=np.int64)), vectors.items, query, n)


def test_exclusions_never_come_back_and_the_rest_moves_up(flat: VectorIndex, vectors: Vectors) -> None:
    rng = np.random.default_rng(1)
    query = vectors.users[5]
    nothing: Rows = np.empty(0, dtype=np.int64)
    top = flat.search(query, 500, nothing)
    # the unfiltered best half of the answer plus random others
    exclude = np.unique(np.concatenate([top[::2], rng.choice(flat.size, 3000, replace=False)]))
    rows = flat.search(query, 500, exclude)
    assert_exact_top(rows, vectors.items, query, 500, exclude)
    assert set(top[1::2].tolist()) - set(exclude.tolist()) <= set(rows.tolist())


@pytest.mark.parametrize("keep", [0, 1, 37, 499, 800])
def test_excluding_most_of_the_catalogue(flat: VectorIndex, vectors: Vectors, keep: int) -> None:
    kept = np.random.default_rng(keep).choice(flat.size, keep, replace=False)
    exclude = np.setdiff1d(np.arange(flat.size), kept).astype(np.int64)
    query = vectors.users[42]
    rows = flat.search(query, 500, exclude)
    assert len(rows) == min(500, keep)
    assert set(rows.tolist()) <= set(kept.tolist())
    assert_exact_top(rows, vectors.items, query, 500, exclude)


def test_edge_sizes(flat: VectorIndex, vectors: Vectors) -> None:
    query = vectors.users[3]
    nothing: Rows = np.empty(0, dtype=np.int64)
    everything = np.arange(flat.size, dtype=np.int64)
    assert flat.search(query, 0, nothing).size == 0
    assert flat.search(query, 10, everything).size == 0
    # more than the catalogue: every row once, best first
    rows = flat.search(query, flat.size + 10, nothing)
    assert sorted(rows.tolist()) == everything.tolist()
    assert_exact_top(rows, vectors.items, query, flat.size)
    # more than what is left after the exclusions: all of the rest
    rest = flat.search(query, 100, everything[20:])
    assert sorted(rest.tolist()) == list(range(20))


def test_ivf_filters_with_a_selector(vectors: Vectors) -> None:
    """IVF searches through an IDSelectorBitmap with its own nprobe: probing every list it is exact."""
    index, _ = build_index(vectors.items, "ivf")
    ivf = VectorIndex(index, len(vectors.items))
    assert ivf._filtered
    index.nprobe = int(index.nlist)
    rng = np.random.default_rng(3)
    for user in range(0, 600, 120):
        query = vectors.users[user]
        exclude = random_exclusion(rng, ivf.size, 4000)
        assert_exact_top(ivf.search(query, 200, exclude), vectors.items, query, 200, exclude)
    # everything but 20 rows excluded, n bigger than what is left: all of the rest, once each
    kept = np.sort(rng.choice(ivf.size, 20, replace=False))
    rows = ivf.search(vectors.users[0], 100, np.setdiff1d(np.arange(ivf.size), kept).astype(np.int64))
    assert sorted(rows.tolist()) == kept.tolist()
    assert ivf.search(vectors.users[0], 10, np.arange(ivf.size, dtype=np.int64)).size == 0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_respect_exclusions(vectors: Vectors, kind: str) -> None:
    """With the tuned nprobe / efSearch (which a search with a selector must keep) under a heavy filter."""
    index, _ = build_index(vectors.items, kind, queries=vectors.users[:200], k=K, threshold=0)
    approx = VectorIndex(index, len(vectors.items))
    assert approx._filtered
    rng = np.random.default_rng(4)
    recalls = []
    for user in range(0, 600, 60):
        query = vectors.users[user]
        exclude = random_exclusion(rng, approx.size, 4000)
        rows = approx.search(query, K, exclude)
        assert 0 < len(rows) <= K and rows.dtype == np.int64
        assert not np.isin(rows, exclude).any()
        assert (rows >= 0).all() and len(set(rows.tolist())) == len(rows)
        best = np.argsort(-exact_scores(vectors.items, query, exclude))[:K]
        recalls.append(np.intersect1d(rows, best).size / K)
    assert np.mean(recalls) > 0.8, recalls


def test_an_index_without_selector_support_over_fetches(vectors: Vectors) -> None:
    """IndexRefine takes no selector: search over-fetches and masks, with the exact answer of the rest."""
    index = faiss.index_factory(DIM, "Flat,Refine(Flat)", faiss.METRIC_INNER_PRODUCT)
    index.add(vectors.items)
    refine = VectorIndex(index, len(vectors.items))
    assert not refine._filtered
    rng = np.random.default_rng(7)
    for excluded in (0, 10, 5000, 9700, len(vectors.items)):
        exclude = random_exclusion(rng, refine.size, excluded)
        query = vectors.users[excluded % 600]
        rows = refine.search(query, 300, exclude)
        assert_exact_top(rows, vectors.items, query, 300, exclude)


def test_a_mismatched_index_is_refused(vectors: Vectors) -> None:
    short = faiss.IndexFlatIP(DIM)
    short.add(vectors.items[:100])
    with pytest.raises(ValueError, match=r"the index holds 100 vectors for 9724 items"):
        VectorIndex(short, len(vectors.items))
    l2 = faiss.IndexFlatL2(DIM)
    l2.add(vectors.items)
    with pytest.raises(ValueError, match="inner product"):
        VectorIndex(l2, len(vectors.items))
