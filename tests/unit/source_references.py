"""Each candidate source's scores for one user, written out from the source's definition with dense numpy
over the whole catalogue: the reference the source contract suite holds the served path to. Slow and
simple on purpose, and independent of the sources' own code (none of it is imported here)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from services.common.sources.base import FitData

F64 = npt.NDArray[np.float64]
DAY = 86_400.0


def _gram(data: FitData) -> F64:
    x = data.matrix.toarray().astype(np.float64)
    out: F64 = x.T @ x
    return out


def _history(data: FitData, user: int) -> npt.NDArray[np.int64]:
    """The user's distinct items, most recent first (the log is in time order, later rows more recent)."""
    items = data.event_items[data.event_users == user][::-1]
    _, first = np.unique(items, return_index=True)
    out: npt.NDArray[np.int64] = items[np.sort(first)]
    return out


def _binary(data: FitData, user: int) -> F64:
    out: F64 = data.matrix[user].toarray().reshape(-1).astype(np.float64)
    return out


def ease(data: FitData, user: int, params: object) -> F64:
    g = _gram(data)
    p = np.linalg.inv(g + params.lam * np.eye(g.shape[0]))  # type: ignore[attr-defined]
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    out: F64 = _binary(data, user) @ b
    return out


def _cosine(data: FitData, neighbours: int, shrinkage: float) -> F64:
    g = _gram(data)
    norms = np.sqrt(np.diag(g))
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.nan_to_num(g / (norms[:, None] * norms[None, :] + shrinkage))
    np.fill_diagonal(sim, 0.0)
    for j in range(sim.shape[1]):  # each target keeps its most similar items (ties at the cut too)
        column = sim[:, j]
        if np.count_nonzero(column) > neighbours:
            cut = np.sort(column)[::-1][neighbours - 1]
            column[column < cut] = 0.0
    return sim


def cooc(data: FitData, user: int, params: object) -> F64:
    sim = _cosine(data, params.neighbours, params.shrinkage)  # type: ignore[attr-defined]
    out: F64 = _binary(data, user) @ sim
    return out


def recent(data: FitData, user: int, params: object) -> F64:
    sim = _cosine(data, params.neighbours, params.shrinkage)  # type: ignore[attr-defined]
    latest = _history(data, user)[: params.window]  # type: ignore[attr-defined]
    out: F64 = sim[latest].sum(axis=0) / params.window  # type: ignore[attr-defined]
    return out


def rp3(data: FitData, user: int, params: object) -> F64:
    x = data.matrix.toarray().astype(np.float64)
    p_ui = x / np.maximum(x.sum(axis=1, keepdims=True), 1.0)
    p_iu = (x / np.maximum(x.sum(axis=0, keepdims=True), 1.0)).T
    w = (p_iu**params.alpha) @ (p_ui**params.alpha)  # type: ignore[attr-defined]
    w /= np.maximum(x.sum(axis=0), 1.0)[None, :] ** params.beta  # type: ignore[attr-defined]
    np.fill_diagonal(w, 0.0)
    out: F64 = _binary(data, user) @ w
    return out


def _pairs(data: FitData, window: int) -> F64:
    n = data.n_items
    pairs = np.zeros((n, n))
    for u in np.unique(data.event_users):
        seq = data.event_items[data.event_users == u]  # time order
        for a in range(len(seq)):
            for b in range(a + 1, min(len(seq), a + window + 1)):
                if seq[a] != seq[b]:
                    pairs[seq[a], seq[b]] += 1
                    pairs[seq[b], seq[a]] += 1
    return pairs


def seq(data: FitData, user: int, params: object) -> F64:
    pop = np.asarray(data.matrix.sum(axis=0)).reshape(-1) + 1.0
    w = _pairs(data, params.window) / (pop[:, None] ** params.alpha * pop[None, :] ** (1 - params.alpha))  # type: ignore[attr-defined]
    out: F64 = _binary(data, user) @ w
    return out


def seqease(data: FitData, user: int, params: object) -> F64:
    g = _pairs(data, params.window)  # type: ignore[attr-defined]
    counts = np.asarray(data.matrix.sum(axis=0)).reshape(-1)
    g += np.diag(counts * params.window / 5.0 + params.lam)  # type: ignore[attr-defined]
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    out: F64 = _binary(data, user) @ b
    return out


def als(data: FitData, user: int, params: object, vectors: F64) -> F64:
    """ALS's user step against fitted item vectors Y: confidence alpha on the history, 1 elsewhere."""
    y = vectors.astype(np.float64)
    h = y[_binary(data, user) > 0]
    a = y.T @ y + params.regularization * np.eye(y.shape[1]) + (params.alpha - 1.0) * h.T @ h  # type: ignore[attr-defined]
    u = np.linalg.solve(a, params.alpha * h.sum(axis=0))  # type: ignore[attr-defined]
    out: F64 = y @ u
    return out


def twotower(
    data: FitData, user: int, params: object, vectors: F64, table: F64, w1: F64, b1: F64, w2: F64, b2: F64
) -> F64:
    """The user tower over the `window` latest items (their table rows averaged, then log1p of the
    history's size), a ReLU layer and a linear one, normalised; against the item tower's vectors."""
    history = _history(data, user)
    recent = history[: params.window]  # type: ignore[attr-defined]
    x = np.concatenate([table[recent].astype(np.float64).mean(axis=0), [np.log1p(history.size)]])
    u = w2 @ np.maximum(w1 @ x + b1, 0.0) + b2
    out: F64 = vectors.astype(np.float64) @ (u / np.linalg.norm(u))
    return out


def content(data: FitData, user: int, params: object) -> F64:
    v = data.content.astype(np.float64)
    profile = v[_binary(data, user) > 0].sum(axis=0)
    out: F64 = v @ (profile / np.linalg.norm(profile))
    return out


def popular(data: FitData, user: int, params: object) -> F64:
    out: F64 = np.asarray(data.matrix.sum(axis=0), dtype=np.float64).reshape(-1)
    return out


#: By source name: (data, user row, params) -> every item's score. ALS also needs its fitted vectors,
#: the two-tower source its item vectors and user tower.
REFERENCES: dict[str, Callable[..., F64]] = {
    "ease": ease,
    "cooc": cooc,
    "rp3": rp3,
    "seq": seq,
    "seqease": seqease,
    "recent": recent,
    "als": als,
    "twotower": twotower,
    "content": content,
    "popular": popular,
}
