"""The item index of one artifact version: FAISS ANN search with exclusions, the popular list, fold-in.

Rows are the artifact's row numbers: row i is `item_ids[i]`, the i-th vector of `item_embeddings.npy`
and FAISS id i in `item_index.faiss` (docs/artifacts.md). Everything on the request path works on numpy
arrays of rows; ids are mapped once on the way in (`rows_of`) and once on the way out (`ids_of`).

Exclusions are applied inside FAISS with an `IDSelectorBitmap` of the allowed rows, so the search itself
skips excluded items and still returns the n best of the rest, however much is excluded (the bitmap costs
n_items/8 bytes per request and does not grow with the number of exclusions). An index type whose
search does not take a selector falls back to over-fetching n + len(excluded) and masking with numpy.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactError, ArtifactVersion

log = logging.getLogger(__name__)

Rows = npt.NDArray[np.int64]
Vector = npt.NDArray[np.float32]

INDEX_FILE = "item_index.faiss"
IDS_FILE = "item_ids.json"
EMBEDDINGS_FILE = "item_embeddings.npy"
POPULAR_FILE = "popular.json"

EMPTY_ROWS: Rows = np.empty(0, dtype=np.int64)
EMPTY_SCORES: Vector = np.empty(0, dtype=np.float32)
_threads = threading.local()
# faiss ships stubs that lack SearchParametersHNSW and the keyword constructors of the Python wrappers.
_faiss: Any = faiss


def _single_threaded() -> None:
    """One OpenMP thread for FAISS in the calling thread: a latency service searches one query at a time,
    and a team of threads per query only adds contention. (OpenMP settings are per thread, so this is
    done lazily in whichever thread searches.)"""
    if not getattr(_threads, "set", False):
        faiss.omp_set_num_threads(1)
        _threads.set = True


def _read_id_list(path: Path, what: str) -> list[str]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what}: cannot read {path.name} ({e})") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArtifactError(f"{what}: {path.name} must be a JSON list of id strings")
    return value


class ItemIndex:
    """FAISS index + item ids + item vectors + popular order of one artifact version, checked consistent."""

    def __init__(
        self,
        index: Any,
        item_ids: Sequence[str],
        embeddings: npt.NDArray[Any],
        popular_ids: Sequence[str],
        *,
        version: str = "",
    ) -> None:
        what = f"artifact {version}" if version else "item index"
        n_items = len(item_ids)
        if n_items == 0:
            raise ArtifactError(f"{what}: {IDS_FILE} lists no items")
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
            raise ArtifactError(
                f"{what}: {EMBEDDINGS_FILE} must be a 2-D float matrix, got shape {embeddings.shape} "
                f"dtype {embeddings.dtype}"
            )
        if int(index.ntotal) != n_items or embeddings.shape[0] != n_items:
            raise ArtifactError(
                f"{what}: row counts disagree: {INDEX_FILE} holds {int(index.ntotal)} vectors, "
                f"{IDS_FILE} lists {n_items} items, {EMBEDDINGS_FILE} has {embeddings.shape[0]} rows"
            )
        if int(index.d) != embeddings.shape[1]:
            raise ArtifactError(
                f"{what}: dimensions disagree: {INDEX_FILE} is {int(index.d)}-d, "
                f"{EMBEDDINGS_FILE} is {embeddings.shape[1]}-d"
            )
        if int(index.metric_type) != faiss.METRIC_INNER_PRODUCT:
            raise ArtifactError(
                f"{what}: {INDEX_FILE} must use inner product (metric {int(index.metric_type)})"
            )
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise ArtifactError(f"{what}: {EMBEDDINGS_FILE} holds non-finite values")
        row_of = {item: row for row, item in enumerate(item_ids)}
        if len(row_of) != n_items:
            raise ArtifactError(f"{what}: {IDS_FILE} has {n_items - len(row_of)} duplicate ids")
        unknown = [p for p in popular_ids if p not in row_of]
        if unknown:
            raise ArtifactError(
                f"{what}: {POPULAR_FILE} names {len(unknown)} items missing from {IDS_FILE}, e.g. {unknown[0]!r}"
            )
        popular_rows = np.fromiter((row_of[p] for p in popular_ids), dtype=np.int64, count=len(popular_ids))
        _, first = np.unique(popular_rows, return_index=True)
        popular_rows = popular_rows[np.sort(first)]  # duplicates: keep the first (best) position
        # Popular order = popular.json, then the rest of the catalogue in row order, so that a fallback
        # can always fill n when the catalogue minus the exclusions holds n items.
        rest = np.ones(n_items, dtype=bool)
        rest[popular_rows] = False

        self.version = version
        self.index = index
        self.item_ids: npt.NDArray[np.object_] = np.array(list(item_ids), dtype=object)
        self.embeddings: Vector = vectors
        self.popular_order: Rows = np.concatenate([popular_rows, np.flatnonzero(rest).astype(np.int64)])
        self.n_popular = len(popular_rows)
        self._row_of = row_of
        self._all_rows = np.packbits(np.ones(n_items, dtype=bool), bitorder="little")
        self._filtered = self._supports_selector()
        _single_threaded()

    @classmethod
    def load(cls, version: ArtifactVersion) -> ItemIndex:
        """Read the four files of `version` (already checksum-verified by `open_version`) and check them."""
        what = f"artifact {version.version}"
        item_ids = _read_id_list(version.file(IDS_FILE), what)
        popular = _read_id_list(version.file(POPULAR_FILE), what)
        try:
            embeddings = np.load(version.file(EMBEDDINGS_FILE), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{what}: cannot read {EMBEDDINGS_FILE} ({e})") from e
        try:
            index = faiss.read_index(str(version.file(INDEX_FILE)))
        except RuntimeError as e:
            raise ArtifactError(f"{what}: cannot read {INDEX_FILE} ({e})") from e
        declared = version.manifest.get("embedding_dim")
        if isinstance(declared, int) and declared != int(index.d):
            raise ArtifactError(
                f"{what}: manifest embedding_dim is {declared}, {INDEX_FILE} is {int(index.d)}-d"
            )
        return cls(index, item_ids, embeddings, popular, version=version.version)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    # --- ids <-> rows -------------------------------------------------------------------------------

    def rows_of(self, ids: Sequence[str]) -> Rows:
        """Rows of the ids the catalogue knows, in the given order; unknown ids are dropped."""
        if not ids:
            return EMPTY_ROWS
        rows = np.fromiter(map(self._row_of.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        return rows[rows >= 0]

    def ids_of(self, rows: Rows) -> list[str]:
        ids: list[str] = self.item_ids[rows].tolist()
        return ids

    # --- candidate sources --------------------------------------------------------------------------

    def fold_in(self, rows: Rows) -> Vector | None:
        """A vector for a user without one: the mean of their (known) recent items' vectors."""
        if len(rows) == 0:
            return None
        mean: Vector = self.embeddings[rows].mean(axis=0, dtype=np.float32)
        return mean

    def search(self, vector: npt.ArrayLike, n: int, exclude_rows: Rows = EMPTY_ROWS) -> tuple[Rows, Vector]:
        """The best `n` rows by inner product with `vector`, best first, none of them in `exclude_rows`.

        Fewer than `n` only when the catalogue minus the exclusions is smaller, or when an approximate
        index (IVF, HNSW) finds fewer under a heavy filter."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"query vector has {query.shape[1]} dimensions, the index {self.dim}")
        if n <= 0:
            return EMPTY_ROWS, EMPTY_SCORES
        _single_threaded()
        if len(exclude_rows) == 0:
            scores, labels = self.index.search(query, min(n, self.size))
        elif self._filtered:
            bitmap, n_allowed = self._allowed_bitmap(exclude_rows)
            if n_allowed == 0:
                return EMPTY_ROWS, EMPTY_SCORES
            selector = _faiss.IDSelectorBitmap(bitmap)  # keeps a reference to `bitmap`
            scores, labels = self.index.search(query, min(n, n_allowed), params=self._params(selector))
        else:
            excluded = np.zeros(self.size, dtype=bool)
            excluded[exclude_rows] = True
            scores, labels = self.index.search(query, min(n + int(np.count_nonzero(excluded)), self.size))
            keep = labels[0] >= 0
            keep[keep] = ~excluded[labels[0][keep]]
            return labels[0][keep][:n].astype(np.int64), scores[0][keep][:n]
        found = labels[0] >= 0  # approximate indexes pad with -1 when they find fewer than asked
        return labels[0][found].astype(np.int64), scores[0][found]

    def popular(self, n: int, exclude_rows: Rows = EMPTY_ROWS) -> Rows:
        """The `n` most popular rows not in `exclude_rows`, most popular first."""
        if n <= 0:
            return EMPTY_ROWS
        order = self.popular_order
        if len(exclude_rows) == 0:
            return order[:n]
        excluded = np.zeros(self.size, dtype=bool)
        excluded[exclude_rows] = True
        return order[~excluded[order]][:n]

    def _allowed_bitmap(self, exclude_rows: Rows) -> tuple[npt.NDArray[np.uint8], int]:
        """The IDSelectorBitmap of every row but `exclude_rows` (bit r of byte r // 8, little-endian) and
        how many rows it allows: a copy of the all-rows bitmap with a few bits cleared, not a catalogue-
        sized boolean array packed per request."""
        rows = np.unique(exclude_rows)
        bitmap = self._all_rows.copy()
        np.bitwise_and.at(bitmap, rows >> 3, ~(1 << (rows & 7)).astype(np.uint8))
        return bitmap, self.size - len(rows)

    # --- FAISS search parameters --------------------------------------------------------------------

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
        try:
            _, labels = self.index.search(
                self.embeddings[:1], 2, params=self._params(_faiss.IDSelectorBitmap(bitmap))
            )
        except RuntimeError as e:  # "search params not supported for this index" and the like
            log.info("index does not filter with a selector; over-fetching", extra={"reason": str(e)})
            return False
        return bool(np.all(labels[0][labels[0] >= 0] == 0))
