"""Candidate sources and baselines over one training matrix, and the FAISS index choice.

Every source scores every (user, item) pair of an `Interactions` matrix; `top_n` turns scores into
candidate lists with the user's training items removed. Sources:

- popularity: the item's number of training interactions;
- EASE (Steck 2019): closed-form item-item linear autoencoder, B = I - P diagMat(1/diag(P)), P = (X'X + lambda I)^-1;
- ALS and BPR from `implicit` (user and item vectors, inner product);
- item-item co-occurrence: cosine similarity of item columns, summed over the user's items;
- RP3beta (Paudel et al. 2017): item-item random-walk transitions with a popularity penalty;
- sequence neighbours: item-item counts of pairs rated within a few positions of each other in the same
  user's time-ordered history, summed over the user's items (the order people rate in carries a signal
  the order-free sources cannot see); sequence EASE: EASE fitted on those counts;
- content: the user's profile against the item's genres and tags (`content_vectors`; the only source
  that scores items nobody has interacted with).

The embedding sources (ALS, BPR, and EASE seen as user = history row, item = column of B) are served
by inner-product search; `build_index` picks exact search (IndexFlatIP) below `ANN_THRESHOLD` items and
HNSW above, and `index_recall` measures an index against exact search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from services.trainer.data import Item, Log, Tags

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: Catalogues at least this large get an approximate (HNSW) index; smaller ones exact search.
ANN_THRESHOLD = 200_000


@dataclass(frozen=True)
class Interactions:
    """A training log as matrices over fixed user and item id lists."""

    user_ids: list[str]
    item_ids: list[str]
    binary: sp.csr_matrix  # (users, items) 1 where the user interacted
    ratings: sp.csr_matrix  # last rating per pair
    user_index: dict[str, int]
    item_index: dict[str, int]

    @classmethod
    def build(cls, log: Log, user_ids: Sequence[str], item_ids: Sequence[str]) -> Interactions:
        uindex = {u: i for i, u in enumerate(user_ids)}
        iindex = {v: i for i, v in enumerate(item_ids)}
        rows = np.fromiter((uindex.get(u, -1) for u in log.users.tolist()), dtype=np.int64, count=len(log))
        cols = np.fromiter((iindex.get(v, -1) for v in log.items.tolist()), dtype=np.int64, count=len(log))
        keep = (rows >= 0) & (cols >= 0)
        shape = (len(user_ids), len(item_ids))
        binary = sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])), shape=shape
        )
        binary.sum_duplicates()
        binary.data[:] = 1.0
        # log is time-ordered: keep the last rating of a repeated pair
        flat = rows[keep] * shape[1] + cols[keep]
        _, last = np.unique(flat[::-1], return_index=True)
        idx = np.flatnonzero(keep)[::-1][last]
        ratings = sp.csr_matrix(
            (log.ratings[idx].astype(np.float32), (rows[idx], cols[idx])), shape=shape, dtype=np.float32
        )
        return cls(list(user_ids), list(item_ids), binary, ratings, uindex, iindex)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.user_ids), len(self.item_ids))


def top_n(scores: F32, exclude: sp.csr_matrix, n: int) -> I64:
    """(users, n) item columns by descending score, the user's `exclude` items removed."""
    s = np.array(scores, dtype=np.float32, copy=True)
    coo = exclude.tocoo()
    s[coo.row, coo.col] = -np.inf
    n = min(n, s.shape[1])
    part = np.argpartition(-s, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    out: I64 = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return out


def ranks(scores: F32, exclude: sp.csr_matrix) -> F32:
    """(users, items) 0-based rank of each item in the user's order (excluded items ranked last)."""
    s = np.array(scores, dtype=np.float32, copy=True)
    coo = exclude.tocoo()
    s[coo.row, coo.col] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")
    out = np.empty_like(s)
    np.put_along_axis(out, order, np.arange(s.shape[1], dtype=np.float32)[None, :], axis=1)
    return out


def popularity(x: Interactions) -> F32:
    counts = np.asarray(x.binary.sum(axis=0), dtype=np.float32).reshape(-1)
    return np.broadcast_to(counts, x.shape).astype(np.float32)


def ease_weights(x: Interactions, lam: float = 500.0) -> F32:
    """EASE's (items, items) weight matrix B with a zero diagonal."""
    gram = (x.binary.T @ x.binary).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    with threadpool_limits(limits=2, user_api="blas"):
        p = np.linalg.inv(gram)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    out: F32 = b.astype(np.float32)
    return out


def ease(x: Interactions, lam: float = 500.0) -> F32:
    scores: F32 = np.asarray(x.binary @ ease_weights(x, lam), dtype=np.float32)
    return scores


@dataclass(frozen=True)
class Factors:
    users: F32
    items: F32

    def scores(self) -> F32:
        out: F32 = (self.users @ self.items.T).astype(np.float32)
        return out


def als(
    x: Interactions,
    factors: int = 64,
    regularization: float = 0.05,
    alpha: float = 10.0,
    iterations: int = 15,
    seed: int = 42,
    threads: int = 2,
) -> Factors:
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            calculate_training_loss=False,
            num_threads=threads,
            random_state=seed,
        )
        model.fit(x.binary.astype(np.float32), show_progress=False)
    return Factors(np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32))


def bpr(
    x: Interactions,
    factors: int = 64,
    learning_rate: float = 0.05,
    regularization: float = 0.001,
    iterations: int = 200,
    seed: int = 42,
) -> Factors:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    # One thread: implicit's BPR updates in parallel without locks (Hogwild), so with more threads
    # two fits of the same seed differ, and so would every number computed from them.
    model = BayesianPersonalizedRanking(
        factors=factors,
        learning_rate=learning_rate,
        regularization=regularization,
        iterations=iterations,
        num_threads=1,
        random_state=seed,
    )
    model.fit(x.binary.astype(np.float32), show_progress=False)
    # implicit's BPR appends a bias column to the item factors and a 1 to the user factors
    return Factors(np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32))


def rp3beta_weights(x: Interactions, alpha: float = 1.0, beta: float = 0.5) -> F32:
    """RP3beta (Paudel et al. 2017): (items, items) 3-step random-walk transition probabilities
    W[i, j] = sum_u P(u | i) P(j | u), raised to `alpha`, divided by popularity(j)^beta; zero diagonal."""
    xd = x.binary.toarray().astype(np.float64)
    user_deg = np.maximum(xd.sum(axis=1, keepdims=True), 1.0)
    item_deg = np.maximum(xd.sum(axis=0), 1.0)
    p_ui = xd / user_deg
    p_iu = (xd / item_deg[None, :]).T
    if alpha != 1.0:
        p_ui, p_iu = p_ui**alpha, p_iu**alpha
    with threadpool_limits(limits=2, user_api="blas"):
        w = p_iu @ p_ui
    w /= item_deg[None, :] ** beta
    w[np.diag_indices_from(w)] = 0.0
    out: F32 = w.astype(np.float32)
    return out


def rp3beta(x: Interactions, alpha: float = 1.0, beta: float = 0.5) -> F32:
    scores: F32 = np.asarray(x.binary @ rp3beta_weights(x, alpha, beta), dtype=np.float32)
    return scores


def sequence_pairs(x: Interactions, log: Log, window: int) -> sp.csr_matrix:
    """(items, items) symmetric counts of item pairs rated at most `window` positions apart in one
    user's time-ordered `log` (the users and items of `x` only)."""
    users = np.fromiter((x.user_index.get(u, -1) for u in log.users.tolist()), np.int64, len(log))
    items = np.fromiter((x.item_index.get(i, -1) for i in log.items.tolist()), np.int64, len(log))
    keep = (users >= 0) & (items >= 0)
    users, items, ts = users[keep], items[keep], log.timestamps[keep]
    order = np.lexsort((ts, users))  # stable: equal timestamps keep log order
    users, items = users[order], items[order]
    rows: list[I64] = []
    cols: list[I64] = []
    for d in range(1, window + 1):
        pair = (users[d:] == users[:-d]) & (items[d:] != items[:-d])
        a, b = items[:-d][pair], items[d:][pair]
        rows += [a, b]
        cols += [b, a]
    n_i = len(x.item_ids)
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=(n_i, n_i))
    counts.sum_duplicates()
    return counts


def sequence_weights(x: Interactions, log: Log, window: int = 5, alpha: float = 0.7) -> sp.csr_matrix:
    """(items, items) W[i, j] = `sequence_pairs`(i, j) / (count(i)^alpha * count(j)^(1 - alpha)).
    alpha = 0.5 is the cosine; a larger alpha penalises the popularity of the scored item j less."""
    popularity = np.asarray(x.binary.sum(axis=0)).reshape(-1) + 1.0
    weights: sp.csr_matrix = (
        sp.diags((popularity**-alpha).astype(np.float32))
        @ sequence_pairs(x, log, window)
        @ sp.diags((popularity ** -(1.0 - alpha)).astype(np.float32))
    ).tocsr()
    return weights


def sequence(x: Interactions, log: Log, window: int = 5, alpha: float = 0.7) -> F32:
    scores: F32 = np.asarray((x.binary @ sequence_weights(x, log, window, alpha)).todense(), dtype=np.float32)
    return scores


def sequence_ease_weights(x: Interactions, log: Log, window: int = 20, lam: float = 200.0) -> F32:
    """EASE's closed form with the sequence-pair counts in place of the co-occurrence Gram matrix:
    G = sequence_pairs + (window / 5) diag(item counts), B = I - P diagMat(1/diag(P)),
    P = (G + lambda I)^-1, zero diagonal. It learns which items are rated near which."""
    gram = sequence_pairs(x, log, window).toarray().astype(np.float64)
    counts = np.asarray(x.binary.sum(axis=0), dtype=np.float64).reshape(-1)
    gram[np.diag_indices_from(gram)] += counts * window / 5.0 + lam
    with threadpool_limits(limits=2, user_api="blas"):
        p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    out: F32 = b.astype(np.float32)
    return out


def cooccurrence_similarity(x: Interactions, neighbours: int = 100) -> F32:
    """(items, items) cosine similarity of item columns, zero diagonal, each column's top neighbours kept."""
    gram = (x.binary.T @ x.binary).toarray().astype(np.float32)
    norms = np.sqrt(np.maximum(np.diag(gram), 1e-9))
    sim = gram / norms[:, None] / norms[None, :]
    sim[np.diag_indices_from(sim)] = 0.0
    if 0 < neighbours < sim.shape[0]:
        cut = -np.partition(-sim, neighbours - 1, axis=0)[neighbours - 1 : neighbours, :]
        sim = np.where(sim >= cut, sim, 0.0).astype(np.float32)
    out: F32 = sim.astype(np.float32)
    return out


def cooccurrence(x: Interactions, neighbours: int = 100) -> F32:
    scores: F32 = np.asarray(x.binary @ cooccurrence_similarity(x, neighbours), dtype=np.float32)
    return scores


def genre_vectors(item_ids: Sequence[str], catalog: dict[str, Item]) -> tuple[list[str], F32]:
    """(genre names, (items, genres) L2-normalised one-hot genres)."""
    names = sorted({g for i in item_ids if i in catalog for g in catalog[i].genres})
    index = {g: j for j, g in enumerate(names)}
    out = np.zeros((len(item_ids), max(1, len(names))), dtype=np.float32)
    for row, item in enumerate(item_ids):
        meta = catalog.get(item)
        for g in meta.genres if meta else ():
            out[row, index[g]] = 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    normalised: F32 = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return names, normalised


def tag_vectors(item_ids: Sequence[str], tags: Tags) -> F32:
    """(items, tags) TF-IDF of the tags each item was given (tf: how many times), rows L2-normalised and
    zero for an untagged item. Only tags given to at least two items are columns: a tag on a single
    item links it to no other."""
    index = {item: row for row, item in enumerate(item_ids)}
    rows = np.fromiter((index.get(i, -1) for i in tags.items.tolist()), dtype=np.int64, count=len(tags))
    names, cols = np.unique(tags.texts[rows >= 0], return_inverse=True)
    counts = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows[rows >= 0], cols)), shape=(len(item_ids), len(names))
    )
    counts.sum_duplicates()
    items_per_tag = np.diff(counts.tocsc().indptr)
    shared = np.flatnonzero(items_per_tag >= 2)
    tagged = int((counts.getnnz(axis=1) > 0).sum())
    # smoothed idf (as scikit-learn's): a tag on every tagged item still counts
    idf = (np.log((1 + tagged) / (1 + items_per_tag[shared])) + 1.0).astype(np.float32)
    out = np.asarray((counts[:, shared] @ sp.diags(idf)).todense(), dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    normalised: F32 = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return normalised


def content_vectors(genres: F32, tags: F32) -> F32:
    """Genres and tags side by side (each part already L2-normalised), rows L2-normalised: an item with
    both is compared on both with equal weight, an item without tags on its genres alone (its row is
    left exactly as it was, so a dataset without tags scores as before tags existed)."""
    out: F32 = np.hstack([genres, tags]).astype(np.float32)
    tagged = np.flatnonzero(np.linalg.norm(tags, axis=1) > 0)
    out[tagged] /= np.linalg.norm(out[tagged], axis=1, keepdims=True)
    return out


def content(x: Interactions, item_vectors: F32) -> F32:
    """Cosine of the user's mean content vector with each item's (cold items included)."""
    profile = np.asarray(x.binary @ item_vectors, dtype=np.float32)
    norms = np.linalg.norm(profile, axis=1, keepdims=True)
    profile = (profile / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    out: F32 = (profile @ item_vectors.T).astype(np.float32)
    return out


def build_index(item_vectors: F32, kind: str = "auto", threshold: int = ANN_THRESHOLD) -> tuple[Any, str]:
    """(FAISS inner-product index over the rows, its kind): "flat" (exact) below `threshold` items,
    "hnsw" above (or as asked)."""
    import faiss

    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if kind == "auto":
        kind = "flat" if vectors.shape[0] < threshold else "hnsw"
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatIP(vectors.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 256
    else:
        raise ValueError(f"unknown index kind {kind!r} (auto, flat, hnsw)")
    index.add(vectors)
    return index, kind


def index_recall(index: Any, item_vectors: F32, queries: F32, k: int) -> float:
    """Share of the exact top k (by inner product) that `index` returns, averaged over the queries."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, item_vectors.shape[0])
    _, got = index.search(q, k)
    exact = np.argsort(-(q @ item_vectors.T), axis=1)[:, :k]
    hits = [len(set(g.tolist()) & set(e.tolist())) for g, e in zip(got, exact, strict=True)]
    return float(np.mean(hits) / k)
