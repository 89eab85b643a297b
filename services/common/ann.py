"""Inner-product search over item vectors with FAISS: the one index builder, and search with exclusions.

`build_index` picks exact search (IndexFlatIP) below `ANN_THRESHOLD` items, and an approximate index
above: IVF-Flat with the smallest power-of-two nprobe whose recall@k against exact search reaches the
target on sample queries (or HNSW when asked). `VectorIndex.search` returns the best rows not excluded:
exclusions are applied inside FAISS with an `IDSelectorBitmap` of the allowed rows, so the search itself
skips them and still returns the n best of the rest (the bitmap costs n_items / 8 bytes per request). With
no more exclusions than n, or an index type whose search does not take a selector, it over-fetches
n + |exclude| and masks instead, which is cheaper.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Rows = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

#: Catalogues at least this large get an approximate index; smaller ones exact search.
ANN_THRESHOLD = 200_000
KINDS = ("auto", "flat", "ivf", "hnsw")

_threads = threading.local()
# faiss ships stubs that lack SearchParametersHNSW and the keyword constructors of the Python wrappers.
_faiss: Any = faiss


def single_threaded() -> None:
    """One OpenMP thread for FAISS in the calling thread: a latency service searches one query at a time,
    and a team of threads per query only adds contention (OpenMP settings are per thread)."""
    if not getattr(_threads, "set", False):
        faiss.omp_set_num_threads(1)
        _threads.set = True


def build_index(
    vectors: F32,
    kind: str = "auto",
    queries: F32 | None = None,
    k: int = 500,
    recall_target: float = 0.95,
    seed: int = 0,
    threshold: int = ANN_THRESHOLD,
) -> tuple[Any, dict[str, Any]]:
    """(FAISS inner-product index over the rows of `vectors`, a description of it for the manifest)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} ({', '.join(KINDS)})")
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = data.shape
    if kind == "auto":
        kind = "flat" if n < threshold else "ivf"
    if kind == "flat":
        flat = faiss.IndexFlatIP(dim)
        flat.add(data)
        return flat, {"type": "flat"}
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.hnsw.efSearch = 256
        hnsw.add(data)
        info: dict[str, Any] = {"type": "hnsw", "M": 32, "efSearch": 256}
        if queries is not None:
            info[f"recall@{k}"] = round(recall(hnsw, data, queries, k), 6)
        return hnsw, info
    nlist = max(1, int(4 * math.sqrt(n)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)
    ivf.train(data[np.sort(sample)])
    ivf.add(data)
    info = {"type": f"ivf{nlist},flat", "nprobe": 1}
    if queries is None:
        ivf.nprobe = min(nlist, 32)
        info["nprobe"] = int(ivf.nprobe)
        return ivf, info
    exact = faiss.IndexFlatIP(dim)
    exact.add(data)
    k = min(k, n)
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    del exact
    nprobe, found_recall = 1, 0.0
    while nprobe <= nlist:
        ivf.nprobe = nprobe
        _, found = ivf.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        found_recall = float(
            np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)])
        )
        log.info("ivf nprobe", extra={"nlist": nlist, "nprobe": nprobe, f"recall@{k}": found_recall})
        if found_recall >= recall_target:
            break
        nprobe *= 2
    info.update({"nprobe": int(ivf.nprobe), f"recall@{k}": round(found_recall, 6), "queries": len(queries)})
    return ivf, info


def recall(index: Any, vectors: F32, queries: F32, k: int) -> float:
    """Share of the exact top k (by inner product) that `index` returns, averaged over the queries."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, vectors.shape[0])
    _, got = index.search(q, k)
    exact = np.argsort(-(q @ vectors.T), axis=1)[:, :k]
    return float(
        np.mean([len(set(g.tolist()) & set(e.tolist())) / k for g, e in zip(got, exact, strict=True)])
    )


class VectorIndex:
    """A FAISS inner-product index whose ids are item rows, searched with exclusions."""

    def __init__(self, index: Any, n_items: int) -> None:
        if int(index.ntotal) != n_items:
            raise ValueError(f"the index holds {int(index.ntotal)} vectors for {n_items} items")
        if int(index.metric_type) != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"the index must use inner product (metric {int(index.metric_type)})")
        self.index = index
        self.size = n_items
        self._all_rows = np.packbits(np.ones(n_items, dtype=bool), bitorder="little")
        self._filtered = self._supports_selector()

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, query: F32, n: int, exclude: Rows) -> Rows:
        """The best `n` rows by inner product with `query`, best first, none in `exclude` (sorted,
        distinct). Fewer only when the catalogue minus the exclusions is smaller, or when an approximate
        index finds fewer under a heavy filter."""
        single_threaded()
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        if exclude.size <= n or not self._filtered:
            # a few exclusions: over-fetch and mask (what the search would have skipped comes back
            # first, so n + |exclude| always holds the n best of the rest); cheaper than a bitmap
            _, labels = self.index.search(q, min(n + exclude.size, self.size))
            found = labels[0][labels[0] >= 0].astype(np.int64)
            if exclude.size:
                pos = np.minimum(np.searchsorted(exclude, found), exclude.size - 1)
                found = found[exclude[pos] != found]
            out: Rows = found[:n]
            return out
        allowed = self.size - exclude.size
        if allowed <= 0:
            return np.empty(0, dtype=np.int64)
        bitmap = self._all_rows.copy()
        np.bitwise_and.at(bitmap, exclude >> 3, ~(1 << (exclude & 7)).astype(np.uint8))
        selector = _faiss.IDSelectorBitmap(bitmap)  # keeps a reference to `bitmap`
        _, labels = self.index.search(q, min(n, allowed), params=self._params(selector))
        rows: Rows = labels[0][labels[0] >= 0].astype(np.int64)  # approximate indexes pad with -1
        return rows

    def _params(self, selector: Any) -> Any:
        """Search parameters carrying `selector` and the index's own tuning (a params object replaces the
        index's nprobe / efSearch, so they are copied)."""
        if isinstance(self.index, faiss.IndexHNSW):
            return _faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.index.hnsw.efSearch))
        if isinstance(self.index, faiss.IndexIVF):
            return _faiss.SearchParametersIVF(
                sel=selector, nprobe=int(self.index.nprobe), max_codes=int(self.index.max_codes)
            )
        return _faiss.SearchParameters(sel=selector)

    def _supports_selector(self) -> bool:
        """Whether this index type filters with an IDSelector (checked once, at load)."""
        allowed = np.zeros(self.size, dtype=bool)
        allowed[0] = True
        bitmap = np.packbits(allowed, bitorder="little")
        probe = np.zeros((1, self.dim), dtype=np.float32)
        try:
            _, labels = self.index.search(probe, 2, params=self._params(_faiss.IDSelectorBitmap(bitmap)))
        except RuntimeError as e:  # "search params not supported for this index" and the like
            log.info("index does not filter with a selector; over-fetching", extra={"reason": str(e)})
            return False
        return bool(np.all(labels[0][labels[0] >= 0] == 0))
