"""Item and user vectors in one inner-product space: implicit ALS on a confidence matrix."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from services.trainer.data import Log

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AlsParams:
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 2.0  # confidence = 1 + alpha * rating
    threads: int = 2
    seed: int = 42


@dataclass(frozen=True)
class Embeddings:
    user_ids: list[str]
    user_vectors: F32  # (n_users, dim)
    item_vectors: F32  # (n_items, dim), rows aligned with the item ids given to `fit_als`


def confidence_matrix(
    log: Log, user_ids: Sequence[str], item_ids: Sequence[str], alpha: float
) -> sp.csr_matrix:
    """(users x items) CSR of summed confidence 1 + alpha * rating (items not in `item_ids` dropped)."""
    uindex = {u: i for i, u in enumerate(user_ids)}
    iindex = {v: i for i, v in enumerate(item_ids)}
    rows = np.fromiter((uindex[u] for u in log.users.tolist()), dtype=np.int64, count=len(log))
    cols = np.fromiter((iindex.get(v, -1) for v in log.items.tolist()), dtype=np.int64, count=len(log))
    keep = cols >= 0
    values = 1.0 + alpha * np.maximum(log.ratings[keep].astype(np.float32), 0.0)
    matrix = sp.csr_matrix(
        (values, (rows[keep], cols[keep])), shape=(len(user_ids), len(item_ids)), dtype=np.float32
    )
    matrix.sum_duplicates()
    return matrix


def fit_als(log: Log, item_ids: Sequence[str], params: AlsParams, show_progress: bool = True) -> Embeddings:
    """ALS on every user of `log`; items of `item_ids` without interactions get (near) zero vectors."""
    from implicit.cpu.als import AlternatingLeastSquares

    user_ids = sorted(set(log.users.tolist()))
    matrix = confidence_matrix(log, user_ids, item_ids, params.alpha)
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            iterations=params.iterations,
            calculate_training_loss=False,
            num_threads=params.threads,
            random_state=params.seed,
        )
        model.fit(matrix, show_progress=show_progress)
    users = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    return Embeddings(user_ids, users, items)
