"""The ranker's input matrix, built the same way by the trainer and by the ranking service.

Everything here uses only what the ranking service has at serve time: the user's feature values (a row
of user_features.npy, from the features service), the candidates' item feature rows (rows of
item_features.npy), the retrieval scores in retrieval order, and the item embeddings and sequence
neighbours of the artifact version (for how close each candidate is to the user's recent items). The
feature schema is fixed here; the trainer writes these names into the manifest and the ranking service
refuses a version whose names differ, so training and serving cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

#: The artifact file of `ItemNeighbours`.
NEIGHBOURS_FILE = "item_neighbours.npz"

#: MovieLens genres; items of other catalogues simply have all-zero genre columns.
GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
    "(no genres listed)",
)


def _genre_slug(genre: str) -> str:
    return "none" if genre.startswith("(") else genre.lower().replace("-", "_")


#: Scalar user features, in column order (before the genre profile).
USER_SCALARS: tuple[str, ...] = (
    "user_log_count",  # log1p(#interactions)
    "user_mean_rating",
    "user_std_rating",
    "user_log_days_active",  # log1p(days between first and last interaction)
    "user_log_days_since_last",  # log1p(days from the last interaction to the log's end)
    "user_mean_item_log_pop",  # mean log1p(item count) of the user's items
    "user_mean_item_year",
)
USER_FEATURES: tuple[str, ...] = USER_SCALARS + tuple(f"user_genre_{_genre_slug(g)}" for g in GENRES)

ITEM_SCALARS: tuple[str, ...] = (
    "item_log_count",  # log1p(#interactions)
    "item_log_pop_30d",  # log1p(sum of exp(-age/30 days)) at the log's end
    "item_log_pop_365d",
    "item_mean_rating",
    "item_bayes_rating",  # mean rating shrunk towards the global mean
    "item_std_rating",
    "item_log_days_since_first",
    "item_log_days_since_last",
    "item_year",  # release year from the title, NaN when unknown
    "item_log_tags",
    "item_n_genres",
)
ITEM_FEATURES: tuple[str, ...] = ITEM_SCALARS + tuple(f"item_genre_{_genre_slug(g)}" for g in GENRES)

CROSS_FEATURES: tuple[str, ...] = (
    "retrieval_score",
    "retrieval_log_rank",  # log1p(position in retrieval order)
    "retrieval_score_gap",  # best candidate's score minus this one's
    "retrieval_score_z",  # score standardised within the candidate list
    "genre_affinity",  # user genre profile . item genres / item's genre count
    "pop_vs_user",  # item_log_count - user_mean_item_log_pop
    "year_vs_user",  # item_year - user_mean_item_year
    "rating_vs_user",  # item_bayes_rating - user_mean_rating
    "recent_similarity",  # candidate embedding . mean embedding of the user's recent items
    "recent_sequence",  # sum of the recent items' sequence-neighbour weights to the candidate
)

#: The ranker's input columns: user scalars, all item features, cross features.
RANKER_FEATURES: tuple[str, ...] = USER_SCALARS + ITEM_FEATURES + CROSS_FEATURES

#: How many of the user's most recent items make up the recent-interest profile.
RECENT_ITEMS = 20

_U = {name: i for i, name in enumerate(USER_FEATURES)}
_I = {name: i for i, name in enumerate(ITEM_FEATURES)}
_N_SCALARS_U = len(USER_SCALARS)
_N_SCALARS_I = len(ITEM_SCALARS)


def recent_profile(recent_embeddings: npt.NDArray[np.floating], dim: int) -> F32:
    """The mean of the recent items' vectors (most recent first, at most RECENT_ITEMS); empty when none."""
    rows = np.asarray(recent_embeddings, dtype=np.float32).reshape(-1, dim)[:RECENT_ITEMS]
    if rows.shape[0] == 0:
        return np.empty(0, dtype=np.float32)
    mean: F32 = rows.mean(axis=0)
    return mean


@dataclass(frozen=True)
class ItemNeighbours:
    """Each item row's strongest sequence neighbours (items rated within a few positions of it by the
    same users), as CSR arrays over item rows: row i's neighbours are indices[indptr[i]:indptr[i+1]]
    with those weights. Sparse, so it grows with the catalogue times the neighbours kept per item."""

    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int32]
    weights: F32

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1

    def scores(self, recent_rows: npt.ArrayLike, candidate_rows: npt.ArrayLike) -> F32:
        """(N,) the summed weights from the recent item rows to each candidate row: 0 where none links,
        NaN for a candidate outside the catalogue (row -1)."""
        candidates = np.asarray(candidate_rows, dtype=np.int64).reshape(-1)
        known = (candidates >= 0) & (candidates < self.n_items)
        out = np.where(known, np.float32(0.0), np.float32(np.nan)).astype(np.float32)
        recent = np.asarray(recent_rows, dtype=np.int64).reshape(-1)
        recent = recent[(recent >= 0) & (recent < self.n_items)]
        if recent.size == 0 or not known.any():
            return out
        at = np.concatenate([np.arange(self.indptr[r], self.indptr[r + 1]) for r in recent])
        if at.size == 0:
            return out
        # Sums over the linked items only (not a catalogue-sized array): the cost per request stays
        # independent of the catalogue.
        linked, inverse = np.unique(self.indices[at], return_inverse=True)
        sums = np.bincount(inverse, weights=self.weights[at]).astype(np.float32)
        wanted = candidates[known]
        pos = np.minimum(np.searchsorted(linked, wanted), linked.size - 1)
        out[known] = np.where(linked[pos] == wanted, sums[pos], np.float32(0.0))
        return out

    def save(self, path: Path) -> None:
        with path.open("wb") as f:
            np.savez(f, indptr=self.indptr, indices=self.indices, weights=self.weights)

    @classmethod
    def load(cls, path: Path, n_items: int) -> ItemNeighbours:
        """Read and check the arrays; ValueError naming what is wrong."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"indptr", "indices", "weights"} - set(z.files)
            if missing:
                raise ValueError(f"{path.name} lacks {sorted(missing)}")
            indptr = z["indptr"].astype(np.int64)
            indices = z["indices"].astype(np.int32)
            weights = z["weights"].astype(np.float32)
        if indptr.shape != (n_items + 1,):
            raise ValueError(f"{path.name} has {indptr.shape[0] - 1} item rows, expected {n_items}")
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
            raise ValueError(f"{path.name}: indptr is not a row pointer over its {len(indices)} entries")
        if len(weights) != len(indices):
            raise ValueError(f"{path.name}: {len(indices)} indices but {len(weights)} weights")
        if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError(f"{path.name}: a neighbour is outside item rows 0..{n_items - 1}")
        return cls(indptr, indices, weights)


def assemble(
    user_values: npt.NDArray[np.floating],
    item_values: npt.NDArray[np.floating],
    retrieval_scores: npt.NDArray[np.floating],
    candidate_embeddings: npt.NDArray[np.floating] | None = None,
    recent: npt.NDArray[np.floating] | None = None,
    recent_sequence: npt.NDArray[np.floating] | None = None,
) -> F32:
    """The ranker's (N, len(RANKER_FEATURES)) float32 input for N candidates of one user.

    user_values: (len(USER_FEATURES),), or empty for a user without a profile (all NaN).
    item_values: (N, len(ITEM_FEATURES)); rows of unknown items are NaN.
    retrieval_scores: (N,), in retrieval order (position = rank).
    candidate_embeddings: (N, d) item vectors (NaN/zero rows for unknown items), and
    recent: (d,) from `recent_profile`; either missing or empty makes recent_similarity NaN.
    recent_sequence: (N,) from `ItemNeighbours.scores` over the same recent items; missing: NaN.
    """
    item = np.asarray(item_values, dtype=np.float32)
    scores = np.asarray(retrieval_scores, dtype=np.float32).reshape(-1)
    n = scores.shape[0]
    if item.ndim != 2 or item.shape != (n, len(ITEM_FEATURES)):
        raise ValueError(f"item_values: expected shape ({n}, {len(ITEM_FEATURES)}), got {item.shape}")
    user = np.asarray(user_values, dtype=np.float32).reshape(-1)
    if user.shape[0] == 0:
        user = np.full(len(USER_FEATURES), np.nan, dtype=np.float32)
    if user.shape[0] != len(USER_FEATURES):
        raise ValueError(f"user_values: expected {len(USER_FEATURES)} values, got {user.shape[0]}")

    out = np.empty((n, len(RANKER_FEATURES)), dtype=np.float32)
    col = 0
    out[:, col : col + _N_SCALARS_U] = user[:_N_SCALARS_U]
    col += _N_SCALARS_U
    out[:, col : col + item.shape[1]] = item
    col += item.shape[1]

    with np.errstate(invalid="ignore", divide="ignore"):
        if n:
            best = np.nanmax(scores) if np.isfinite(scores).any() else np.nan
            std = float(np.nanstd(scores)) if n > 1 else 0.0
            z = (scores - np.nanmean(scores)) / std if std > 0 else np.zeros(n, dtype=np.float32)
        else:
            best, z = np.nan, np.zeros(0, dtype=np.float32)
        user_genres = user[_N_SCALARS_U:]
        item_genres = item[:, _N_SCALARS_I:]
        affinity = (item_genres @ user_genres) / np.maximum(item[:, _I["item_n_genres"]], 1.0)
        if (
            candidate_embeddings is not None
            and recent is not None
            and np.asarray(recent).size
            and np.asarray(candidate_embeddings).size
        ):
            emb = np.asarray(candidate_embeddings, dtype=np.float32).reshape(n, -1)
            similarity = emb @ np.asarray(recent, dtype=np.float32)
        else:
            similarity = np.full(n, np.nan, dtype=np.float32)
        if recent_sequence is None:
            sequence = np.full(n, np.nan, dtype=np.float32)
        else:
            sequence = np.asarray(recent_sequence, dtype=np.float32).reshape(-1)
            if sequence.shape[0] != n:
                raise ValueError(f"recent_sequence: expected {n} values, got {sequence.shape[0]}")
        cross = (
            scores,
            np.log1p(np.arange(n, dtype=np.float32)),
            best - scores,
            z,
            affinity,
            item[:, _I["item_log_count"]] - user[_U["user_mean_item_log_pop"]],
            item[:, _I["item_year"]] - user[_U["user_mean_item_year"]],
            item[:, _I["item_bayes_rating"]] - user[_U["user_mean_rating"]],
            similarity,
            sequence,
        )
    for values in cross:
        out[:, col] = values
        col += 1
    assert col == len(RANKER_FEATURES)
    return out
