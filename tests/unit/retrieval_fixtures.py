"""A small but real artifact version for the retrieval tests, built from the bundled MovieLens latest-small.

Item and user vectors come from a truncated SVD of the (user x item) rating matrix, split symmetrically
(items = V * sqrt(s), users = U * sqrt(s)) so that user . item approximates the rating; the index is an
exact `faiss.IndexFlatIP`; popular = items by number of ratings. Written with the same `staging_dir` +
`publish` the trainer uses, so `open_version` verifies it like any other version. Independent of
services/trainer on purpose: these tests exercise retrieval, not training.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import svds

from services.common.artifacts import ArtifactVersion, publish, staging_dir
from tests.support import BUNDLED_DATA

DIM = 32


@dataclass(frozen=True)
class SmallModel:
    item_ids: list[str]
    item_embeddings: npt.NDArray[np.float32]
    user_ids: list[str]
    user_embeddings: npt.NDArray[np.float32]
    popular: list[str]
    #: user id -> rated item ids, most recent first
    history: dict[str, list[str]]


@functools.cache
def small_model(dim: int = DIM) -> SmallModel:
    """SVD item/user vectors from ml-latest-small (cached: one computation per test process)."""
    raw = np.loadtxt(
        BUNDLED_DATA / "ratings.csv", delimiter=",", skiprows=1, dtype=np.float64, usecols=(0, 1, 2, 3)
    )
    users_raw, items_raw = raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64)
    user_values, user_rows = np.unique(users_raw, return_inverse=True)
    item_values, item_rows = np.unique(items_raw, return_inverse=True)
    matrix = csr_matrix(
        (raw[:, 2].astype(np.float64), (user_rows, item_rows)), shape=(len(user_values), len(item_values))
    )
    u, s, vt = svds(matrix, k=dim, random_state=0)
    root = np.sqrt(s)
    items = np.ascontiguousarray((vt.T * root).astype(np.float32))
    users = np.ascontiguousarray((u * root).astype(np.float32))
    item_ids = [str(v) for v in item_values]
    counts = np.bincount(item_rows, minlength=len(item_values))
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count desc, then row: deterministic
    history: dict[str, list[str]] = {}
    by_time = np.lexsort((-raw[:, 3], users_raw))  # per user, most recent first
    for user, item in zip(users_raw[by_time], items_raw[by_time], strict=True):
        history.setdefault(str(user), []).append(str(item))
    return SmallModel(
        item_ids=item_ids,
        item_embeddings=items,
        user_ids=[str(v) for v in user_values],
        user_embeddings=users,
        popular=[item_ids[i] for i in order],
        history=history,
    )


def write_version(
    root: Path,
    version: str,
    model: SmallModel | None = None,
    *,
    index_rows: int | None = None,
    index_spec: str = "Flat",
    nprobe: int = 1,
) -> ArtifactVersion:
    """Publish `model` as artifact `version` under `root` (and point CURRENT at it).

    `index_rows` puts only the first rows into the FAISS index: an inconsistent version whose checksums
    are all correct, which the service must refuse at load. `index_spec` is a `faiss.index_factory` string
    ("Flat" exact; e.g. "IVF64,Flat" with `nprobe` for an approximate index).
    """
    model = model or small_model()
    staging = staging_dir(root, version)
    vectors = model.item_embeddings[: index_rows if index_rows is not None else len(model.item_ids)]
    index = faiss.index_factory(vectors.shape[1], index_spec, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = nprobe
    faiss.write_index(index, str(staging / "item_index.faiss"))
    np.save(staging / "item_embeddings.npy", model.item_embeddings)
    (staging / "item_ids.json").write_text(json.dumps(model.item_ids))
    (staging / "popular.json").write_text(json.dumps(model.popular))
    (staging / "user_ids.json").write_text(json.dumps(model.user_ids))
    np.save(staging / "user_embeddings.npy", model.user_embeddings)
    (staging / "user_history.json").write_text(json.dumps(model.history))
    manifest = {
        "data": {"source": str(BUNDLED_DATA), "users": len(model.user_ids), "items": len(model.item_ids)},
        "params": {"embeddings": "svd", "dim": int(model.item_embeddings.shape[1]), "index": index_spec},
        "metrics": {},
        "features": {"user": [], "item": [], "ranker": []},
        "embedding_dim": int(model.item_embeddings.shape[1]),
    }
    return publish(root, staging, version, manifest)
