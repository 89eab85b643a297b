"""Co-activity in time: the items people interacted with on the days the user was active.

An item's score is the share of its interactions (in the fitted slice) that fall on a day (a `unit_days`
period, UTC) on which the user interacted too. What the user did on those days is what the fit saw: a
user the fit did not see, or a click since, adds no day until the next training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.sources.base import EMPTY_ROWS, FitData, FitError, History, Rows
from services.common.sources.tables import NeighbourTable, TableSource

DAY = 86_400.0


@dataclass(frozen=True)
class CoactiveParams:
    unit_days: float = 1.0


class Coactive(TableSource):
    name = "coactive"
    Params = CoactiveParams

    def __init__(
        self, params: CoactiveParams, table: NeighbourTable, user_ids: list[str], user_units: sp.csr_matrix
    ) -> None:
        super().__init__(params, table)
        self.user_row = {u: i for i, u in enumerate(user_ids)}
        self.user_ids = user_ids
        self.user_units = user_units

    @classmethod
    def fit(cls, data: FitData, params: CoactiveParams) -> Coactive:
        if not params.unit_days > 0:
            raise FitError(cls.name, f"unit_days must be > 0, got {params.unit_days}")
        if len(data.user_ids) != data.matrix.shape[0]:
            raise FitError(cls.name, "needs the id of every user row")
        units_raw = np.floor(data.event_times / (params.unit_days * DAY)).astype(np.int64)
        units, unit = np.unique(units_raw, return_inverse=True)
        n_units, n_items = max(1, units.size), data.n_items
        # per (unit, item): the item's interactions in that unit, over all of its interactions
        per_unit = sp.csr_matrix(
            (np.ones(unit.size, dtype=np.float64), (unit, data.event_items)), shape=(n_units, n_items)
        )
        per_unit.sum_duplicates()
        totals = np.maximum(np.asarray(per_unit.sum(axis=0)).reshape(-1), 1.0)
        shares = (per_unit @ sp.diags(1.0 / totals)).tocsr()
        user_units = sp.csr_matrix(
            (np.ones(unit.size, dtype=np.float32), (data.event_users, unit)),
            shape=(data.matrix.shape[0], n_units),
        )
        user_units.sum_duplicates()
        return cls(params, NeighbourTable.from_matrix(shares, n_items), list(data.user_ids), user_units)

    def query_rows(self, history: History) -> Rows:
        row = self.user_row.get(history.user_id)
        if row is None:
            return EMPTY_ROWS
        out: Rows = self.user_units.indices[
            self.user_units.indptr[row] : self.user_units.indptr[row + 1]
        ].astype(np.int64)
        return np.sort(out)

    def save(self, directory: Path) -> None:
        super().save(directory)
        (directory / self.file("users.json")).write_text(json.dumps(self.user_ids))
        with (directory / self.file("user_units.npz")).open("wb") as f:
            np.savez(
                f,
                indptr=self.user_units.indptr.astype(np.int64),
                indices=self.user_units.indices.astype(np.int32),
            )

    @classmethod
    def load(cls, version: ArtifactVersion, n_items: int) -> Coactive:
        what = f"artifact {version.version}: source {cls.name}"
        try:
            user_ids = json.loads(version.file(f"{cls.name}.users.json").read_text())
            with np.load(version.file(f"{cls.name}.user_units.npz"), allow_pickle=False) as z:
                indptr: npt.NDArray[np.int64] = z["indptr"].astype(np.int64)
                indices: npt.NDArray[np.int32] = z["indices"].astype(np.int32)
        except (OSError, ValueError, KeyError) as e:
            raise ArtifactError(f"{what}: cannot read its user units ({e})") from e
        if (
            not isinstance(user_ids, list)
            or indptr.shape != (len(user_ids) + 1,)
            or indptr[-1] != indices.size
        ):
            raise ArtifactError(f"{what}: {cls.name}.user_units.npz does not match {cls.name}.users.json")
        with np.load(version.file(f"{cls.name}.table.npz"), allow_pickle=False) as z:
            n_units = int(z["indptr"].shape[0] - 1)
        if indices.size and (indices.min() < 0 or indices.max() >= n_units):
            raise ArtifactError(f"{what}: a user unit is outside the table's {n_units} units")
        table = NeighbourTable.load(version.file(f"{cls.name}.table.npz"), n_units, n_items, what)
        user_units = sp.csr_matrix(
            (np.ones(indices.size, dtype=np.float32), indices, indptr), shape=(len(user_ids), n_units)
        )
        return cls(cls.params_from(version), table, [str(u) for u in user_ids], user_units)
