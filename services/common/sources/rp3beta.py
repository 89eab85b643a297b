"""RP3beta (Paudel et al. 2017): item-item three-step random-walk transitions, popularity-penalised.

W[i, j] = sum_u P(u | i) P(j | u), each probability raised to `alpha`, divided by popularity(j)^beta,
zero diagonal; a user's score for j sums W[i, j] over their history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from services.common.sources.base import FitData, FitError
from services.common.sources.dense import dense_items, table
from services.common.sources.tables import TableSource


@dataclass(frozen=True)
class Rp3betaParams:
    alpha: float = 1.0
    beta: float = 0.5
    neighbours: int = 500
    max_items: int = 5000


class Rp3beta(TableSource):
    name = "rp3"
    Params = Rp3betaParams

    @classmethod
    def fit(cls, data: FitData, params: Rp3betaParams) -> Rp3beta:
        if not params.alpha > 0:
            raise FitError(cls.name, f"alpha must be > 0, got {params.alpha}")
        items = dense_items(data, cls.name, params.max_items)
        x = data.matrix
        user_degree = np.maximum(np.asarray(x.sum(axis=1), dtype=np.float64).reshape(-1), 1.0)
        sub = sp.csr_matrix(x[:, items], dtype=np.float64)
        item_degree = np.maximum(np.asarray(sub.sum(axis=0)).reshape(-1), 1.0)
        p_ui = sp.diags(1.0 / user_degree) @ sub  # P(item | user)
        p_iu = (sub @ sp.diags(1.0 / item_degree)).T.tocsr()  # P(user | item)
        if params.alpha != 1.0:
            p_ui, p_iu = p_ui.power(params.alpha), p_iu.power(params.alpha)
        with threadpool_limits(limits=data.threads, user_api="blas"):
            w = (p_iu @ p_ui).toarray()
        w /= item_degree[None, :] ** params.beta
        w[np.diag_indices_from(w)] = 0.0
        return cls(params, table(w, items, data.n_items, params.neighbours))
