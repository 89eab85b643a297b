"""Item content vectors from the catalogue: genres and the tags users gave (what the content source
scores with, and what diversity is measured on). services.common.content_space makes one item's vector
the same way, for an item upserted after training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.trainer.data import Item, Tags

F32 = npt.NDArray[np.float32]


def genre_vectors(item_ids: Sequence[str], catalog: dict[str, Item]) -> tuple[list[str], F32]:
    """(genre names, (items, genres) L2-normalised one-hot genres)."""
    names = sorted({g for i in item_ids if i in catalog for g in catalog[i].genres})
    index = {g: j for j, g in enumerate(names)}
    out = np.zeros((len(item_ids), max(1, len(names))), dtype=np.float32)
    for row, item in enumerate(item_ids):
        meta = catalog.get(item)
        for g in meta.genres if meta else ():
            out[row, index[g]] = 1.0
    return names, _normalised(out)


def tag_vectors(item_ids: Sequence[str], tags: Tags) -> tuple[list[str], F32, F32]:
    """(tag column names, their idf, (items, tags) TF-IDF of the tags each item was given (tf: how many
    times), rows L2-normalised and zero for an untagged item). Only tags given to at least two items are
    columns: a tag on a single item links it to no other."""
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
    matrix = _normalised(np.asarray((counts[:, shared] @ sp.diags(idf)).todense(), dtype=np.float32))
    return [str(t) for t in names[shared]], idf, matrix


def content_vectors(genres: F32, tags: F32) -> F32:
    """Genres and tags side by side (each part already L2-normalised), rows L2-normalised: an item with
    both is compared on both with equal weight, an item without tags on its genres alone (its row is
    left exactly as it was, so a dataset without tags scores as before tags existed)."""
    out: F32 = np.hstack([genres, tags]).astype(np.float32)
    tagged = np.flatnonzero(np.linalg.norm(tags, axis=1) > 0)
    out[tagged] /= np.linalg.norm(out[tagged], axis=1, keepdims=True)
    return out


def _normalised(matrix: F32) -> F32:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: F32 = (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out
