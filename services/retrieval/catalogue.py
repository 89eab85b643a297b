"""The catalogue as retrieval filters it: one artifact version's items (their genres are their categories)
with the live catalogue (services.common.catalogue) on top.

* Hidden items are excluded from every source's list, top-ups included.
* A trained item that was upserted takes the upserted metadata (categories, publish time, attributes);
  the others have their genres as categories, no publish time and no attributes.
* Upserted items the version was not trained on are `fresh`: no source of the version knows them, so
  retrieval scores them by content (their categories and tags, in the version's content space, against
  the user's content profile) and appends
  them as candidates of origin `fresh`; the ranking service gives them its exploration slots.

`LiveCatalogue` is rebuilt whenever the mirror or the served version changes (per request only the
filter is evaluated: one pass over the category columns it names, plus the upserted items).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.v1 import common_pb2
from services.common.artifacts import ArtifactError
from services.common.catalogue import CatalogueItem, MirrorState, is_empty, matches
from services.common.content_space import ContentSpace
from services.common.sources.base import EMPTY_ROWS, F32, Rows

ITEMS_FILE = "items.csv"
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TrainedCategories:
    """The genres of every item of a version (items.csv), as an (items, categories) CSC matrix."""

    names: list[str]
    index: Mapping[str, int]
    matrix: sp.csc_matrix

    @classmethod
    def read(cls, path: Path, row_of: Mapping[str, int]) -> TrainedCategories:
        rows: list[int] = []
        cols: list[int] = []
        index: dict[str, int] = {}
        try:
            with path.open(newline="", encoding="utf-8") as f:
                for record in csv.DictReader(f):
                    row = row_of.get(record.get("item_id") or "")
                    for genre in filter(None, (record.get("genres") or "").split("|")):
                        if row is not None:
                            rows.append(row)
                            cols.append(index.setdefault(genre, len(index)))
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            raise ArtifactError(f"cannot read {path.name} ({e})") from e
        names = sorted(index)
        order = {g: j for j, g in enumerate(names)}
        remap = np.array([order[g] for g in index], dtype=np.int64)
        matrix = sp.csc_matrix(
            (np.ones(len(rows), dtype=bool), (np.asarray(rows, dtype=np.int64), remap[cols] if cols else [])),
            shape=(len(row_of), len(names)),
        )
        return cls(names, order, matrix)

    def any_of(self, categories: Sequence[str]) -> Mask:
        cols = [self.index[c] for c in categories if c in self.index]
        if not cols:
            return np.zeros(self.matrix.shape[0], dtype=bool)
        return np.asarray(self.matrix[:, cols].sum(axis=1)).reshape(-1) > 0


@dataclass(frozen=True)
class LiveCatalogue:
    """One version's items with one state of the live catalogue on top."""

    version: int
    hidden_rows: Rows  # sorted
    upserted_rows: dict[int, CatalogueItem]  # trained items with upserted metadata
    fresh: list[CatalogueItem]  # upserted, unknown to the version, not hidden
    fresh_vectors: F32  # (fresh, d) content vectors
    fresh_published: npt.NDArray[np.int64]
    attributes: frozenset[str]  # every attribute name an item has
    hidden_ids: frozenset[str]

    @classmethod
    def build(cls, state: MirrorState, row_of: Mapping[str, int], space: ContentSpace) -> LiveCatalogue:
        hidden_rows = np.sort(np.fromiter((row_of[i] for i in state.hidden if i in row_of), dtype=np.int64))
        upserted_rows: dict[int, CatalogueItem] = {}
        fresh: list[CatalogueItem] = []
        for item in state.upserted():
            row = row_of.get(item.item_id)
            if row is not None:
                upserted_rows[row] = item
            elif item.item_id not in state.hidden:
                fresh.append(item)
        vectors = np.zeros((len(fresh), space.dim), dtype=np.float32)
        for j, item in enumerate(fresh):
            vectors[j] = space.vector(item.categories, item.tags)
        return cls(
            state.version,
            hidden_rows,
            upserted_rows,
            fresh,
            vectors,
            np.array([i.published_at_ms for i in fresh], dtype=np.int64),
            state.attributes,
            state.hidden,
        )

    def excluded_rows(self, f: common_pb2.ItemFilter, trained: TrainedCategories) -> Rows:
        """Trained rows no source may return under `f`: the hidden ones and those not matching it."""
        if is_empty(f):
            return self.hidden_rows
        n = trained.matrix.shape[0]
        # trained items that were never upserted: genres only, no publish time, no attributes
        allowed = np.ones(n, dtype=bool)
        if f.include_categories:
            allowed &= trained.any_of(list(f.include_categories))
        if f.exclude_categories:
            allowed &= ~trained.any_of(list(f.exclude_categories))
        if f.published_after_ms or f.published_before_ms or f.attributes:
            allowed[:] = False
        for row, item in self.upserted_rows.items():
            allowed[row] = matches(item, f)
        allowed[self.hidden_rows] = False
        out: Rows = np.flatnonzero(~allowed).astype(np.int64)
        return out

    def fresh_allowed(self, f: common_pb2.ItemFilter, exclude_ids: frozenset[str]) -> npt.NDArray[np.int64]:
        """Positions in `fresh` a request may get."""
        if not self.fresh:
            return EMPTY_ROWS
        keep = [
            j
            for j, item in enumerate(self.fresh)
            if item.item_id not in exclude_ids and (is_empty(f) or matches(item, f))
        ]
        return np.asarray(keep, dtype=np.int64)
