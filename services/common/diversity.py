"""Maximal marginal relevance (Carbonell & Goldstein 1998) over the ranker's top candidates."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: MMR looks this many times k deep into the ranked list for items to diversify with.
POOL_FACTOR = 4


def mmr(
    relevance: npt.NDArray[np.float64], vectors: npt.NDArray[np.float32], k: int, lam: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Greedy MMR: each next item maximises lam * relevance - (1 - lam) * (max cosine similarity to
    the items already chosen), relevance min-max scaled to [0, 1]. Returns the chosen positions in
    order and their marginal values made non-increasing (so they read as scores, best first).
    Rows of `vectors` with NaN or zero norm (unknown items) count as similar to nothing."""
    m = len(relevance)
    span = float(relevance.max() - relevance.min()) if m else 0.0
    rel = (relevance - relevance.min()) / span if span > 0 else np.ones(m)
    unit = np.nan_to_num(vectors.astype(np.float64))
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    unit = np.divide(unit, norms, out=np.zeros_like(unit), where=norms > 0)
    max_sim = np.zeros(m)
    available = np.ones(m, dtype=bool)
    chosen: list[int] = []
    values: list[float] = []
    for _ in range(min(k, m)):
        value = np.where(available, lam * rel - (1 - lam) * max_sim, -np.inf)
        j = int(np.argmax(value))
        chosen.append(j)
        values.append(float(value[j]))
        available[j] = False
        max_sim = np.maximum(max_sim, unit @ unit[j])
    return np.asarray(chosen, dtype=np.int64), np.minimum.accumulate(np.asarray(values, dtype=np.float64))
