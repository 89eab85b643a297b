"""Two-tower retrieval: an item tower over the item's id and content (genres, tags), a user tower over
the user's recent items, trained with PyTorch (services.trainer.two_tower, the optional extra
`recsys[deep]`) and served with numpy alone.

The item tower's vectors of the whole catalogue go into FAISS like any vector source's. The user
tower is computed at request time from the live history, so a new click moves the query at once:

    x = [ mean over the `window` most recent items h of table[h],  log1p(|history|) ]
    u = W2 relu(W1 x + b1) + b2,   query = u / |u|

`table` (items, d + 1) holds, per item, what the user tower pools: its history embedding plus the
projection of its content vector, and its log-popularity. The trainer folds the content projection
into the table (mean pooling and the projection are both linear), so serving needs no content matrix.
Files: `twotower.vectors.npy`, `twotower.index.faiss`, `twotower.user_tower.npz`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.extras import NEEDS_DEEP, deep_missing
from services.common.sources.base import F32, FitData, FitError, History
from services.common.sources.vectors import VectorSource, flat_index

F64 = npt.NDArray[np.float64]

#: The arrays of `twotower.user_tower.npz`, in the order `UserTower` takes them.
TOWER_ARRAYS = ("table", "w1", "b1", "w2", "b2")


@dataclass(frozen=True)
class TwoTowerParams:
    dim: int = 64  # the vector space both towers map into (FAISS's dimension)
    hidden: int = 128  # each tower's hidden layer
    window: int = 50  # recent items the user tower pools
    epochs: int = 30  # at most: training stops after `patience` epochs without a better validation recall
    patience: int = 3
    batch: int = 512  # in-batch negatives: the other positives of the batch
    learning_rate: float = 3e-3
    temperature: float = 0.05
    logq: bool = True  # subtract log(sampling probability) from each logit (popular items are sampled more)
    validation_k: int = 100  # early stopping on recall@validation_k of each user's latest item
    index: str = "auto"
    recall_target: float = 0.95

    def problem(self) -> str | None:
        counts = {
            "dim": self.dim,
            "hidden": self.hidden,
            "window": self.window,
            "epochs": self.epochs,
            "batch": self.batch,
            "validation_k": self.validation_k,
        }
        small = [f"{k}={v}" for k, v in counts.items() if v < 1]
        if small:
            return f"{', '.join(small)}: must be >= 1"
        if self.patience < 0 or not self.learning_rate > 0 or not self.temperature > 0:
            return (
                f"patience must be >= 0, learning_rate and temperature > 0, got {self.patience}, "
                f"{self.learning_rate}, {self.temperature}"
            )
        return None


@dataclass(frozen=True)
class UserTower:
    """The user tower's weights as numpy arrays (float32, as trained)."""

    table: F32  # (items, d_in - 1)
    w1: F32  # (hidden, d_in)
    b1: F32  # (hidden,)
    w2: F32  # (dim, hidden)
    b2: F32  # (dim,)

    def check(self, n_items: int, dim: int) -> str | None:
        """What is wrong with these weights for `n_items` items of `dim` dimensions; None when nothing."""
        arrays = [self.table, self.w1, self.b1, self.w2, self.b2]
        if any(a.dtype != np.float32 for a in arrays) or not all(np.isfinite(a).all() for a in arrays):
            return "arrays must be finite float32"
        hidden = self.w1.shape[0]
        expected = [
            (n_items, self.w1.shape[1] - 1),
            (hidden, self.table.shape[1] + 1),
            (hidden,),
            (dim, hidden),
            (dim,),
        ]
        got = [a.shape for a in arrays]
        if got != expected:
            return f"shapes {got} do not fit {n_items} items of {dim} dimensions"
        return None

    def query(self, recent: npt.NDArray[np.int64], history_size: int) -> F32 | None:
        """The unit query vector of a user whose `recent` items (sorted, so the sum is in one order) are
        pooled, out of `history_size` distinct items; None when the tower gives no direction."""
        pooled = self.table[recent].astype(np.float64).mean(axis=0)
        x = np.concatenate([pooled, [np.log1p(history_size)]])
        hidden = np.maximum(self.w1.astype(np.float64) @ x + self.b1, 0.0)
        u: F64 = self.w2.astype(np.float64) @ hidden + self.b2
        norm = float(np.linalg.norm(u))
        if not norm > 0:
            return None
        out: F32 = (u / norm).astype(np.float32)
        return out


class TwoTower(VectorSource):
    name = "twotower"
    Params = TwoTowerParams

    def __init__(
        self, params: TwoTowerParams, vectors: F32, index: Any, index_info: dict[str, Any], tower: UserTower
    ) -> None:
        super().__init__(params, vectors, index, index_info)
        self.tower = tower

    @classmethod
    def unavailable(cls) -> str | None:
        return deep_missing()

    @classmethod
    def fit(cls, data: FitData, params: TwoTowerParams) -> TwoTower:
        problem = params.problem()
        if problem:
            raise FitError(cls.name, problem)
        if data.matrix.nnz == 0:
            raise FitError(cls.name, "no interactions to fit on")
        try:
            from services.trainer import two_tower
        except ImportError:
            raise FitError(cls.name, NEEDS_DEEP) from None
        trained = two_tower.train(data, params)
        vectors = trained.vectors
        return cls(params, vectors, flat_index(vectors), {"type": "flat"}, trained.tower).tuned(
            data.histories(), params.index, params.recall_target, data.seed
        )

    def with_index(self, index: Any, index_info: dict[str, Any]) -> Self:
        return type(self)(self.params, self.vectors, index, index_info, self.tower)

    def query(self, history: History) -> F32 | None:
        if len(history) == 0:
            return None
        return self.tower.query(np.sort(history.recent(self.params.window)), len(history))

    def save(self, directory: Path) -> None:
        super().save(directory)
        with (directory / self.file("user_tower.npz")).open("wb") as f:
            np.savez(f, **{name: getattr(self.tower, name) for name in TOWER_ARRAYS})

    @classmethod
    def load(cls, version: ArtifactVersion, n_items: int) -> Self:
        vectors, index = cls.read(version, n_items)
        what = f"artifact {version.version}: source {cls.name}"
        part = f"{cls.name}.user_tower.npz"
        try:
            with np.load(version.file(part), allow_pickle=False) as npz:
                tower = UserTower(*(np.asarray(npz[name]) for name in TOWER_ARRAYS))
        except (OSError, ValueError, KeyError) as e:
            raise ArtifactError(f"{what}: cannot read {part} ({e})") from e
        problem = tower.check(n_items, vectors.shape[1])
        if problem:
            raise ArtifactError(f"{what}: {part}: {problem}")
        return cls(cls.params_from(version), vectors, index, {}, tower)
