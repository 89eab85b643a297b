"""What the retrieval service holds for one artifact version: the catalogue's ids and every source of
the version's pipeline (services.common.sources), loaded from its files and checked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.v1 import common_pb2
from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.content_space import CONTENT_SPACE_FILE, ContentSpace
from services.common.fusion import FusionParams
from services.common.sources import source_class
from services.common.sources.base import EMPTY_ROWS, History, Rows, Source
from services.retrieval.catalogue import ITEMS_FILE, TrainedCategories

IDS_FILE = "item_ids.json"


@dataclass(frozen=True)
class RetrievalModel:
    version: str
    item_ids: npt.NDArray[np.object_]
    row_of: dict[str, int]
    sources: dict[str, Source]
    fusion: FusionParams
    #: every item's genres: its categories for filters
    categories: TrainedCategories
    #: how an upserted item's content vector is made (its categories and tags)
    content_space: ContentSpace

    @classmethod
    def load(cls, version: ArtifactVersion) -> RetrievalModel:
        """Every source the manifest lists; ArtifactError naming the first that cannot be served."""
        what = f"artifact {version.version}"
        try:
            ids = json.loads(version.file(IDS_FILE).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{what}: cannot read {IDS_FILE} ({e})") from e
        if not isinstance(ids, list) or not ids or not all(isinstance(v, str) for v in ids):
            raise ArtifactError(f"{what}: {IDS_FILE} must be a non-empty JSON list of id strings")
        row_of = {item: row for row, item in enumerate(ids)}
        if len(row_of) != len(ids):
            raise ArtifactError(f"{what}: {IDS_FILE} has {len(ids) - len(row_of)} duplicate ids")
        pipeline: dict[str, Any] = version.manifest.get("pipeline") or {}
        names = pipeline.get("sources") or []
        if not names:
            raise ArtifactError(f"{what}: manifest pipeline lists no sources")
        sources: dict[str, Source] = {}
        for name in names:
            try:
                kind = source_class(name)
            except KeyError as e:
                raise ArtifactError(f"{what}: {e.args[0]}") from e
            sources[name] = kind.load(version, len(ids))
        try:
            raw = pipeline["fusion"]
            fusion = FusionParams(
                fused=tuple(raw["fused"]),
                k=float(raw["k"]),
                depth=int(raw["depth"]),
                candidates=int(raw["candidates"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{what}: manifest pipeline.fusion is incomplete ({e})") from e
        unknown = [s for s in fusion.fused if s not in sources]
        if unknown:
            raise ArtifactError(f"{what}: manifest fuses {unknown}, which are not among its sources")
        try:
            categories = TrainedCategories.read(version.file(ITEMS_FILE), row_of)
        except ArtifactError as e:
            raise ArtifactError(f"{what}: {e}") from e
        space = ContentSpace.read(version)
        vectors = getattr(sources.get("content"), "vectors", None)
        if vectors is not None and vectors.shape[1] != space.dim:
            raise ArtifactError(
                f"{what}: the content vectors have {vectors.shape[1]} dimensions, {CONTENT_SPACE_FILE} "
                f"describes {space.dim}"
            )
        return cls(version.version, np.array(ids, dtype=object), row_of, sources, fusion, categories, space)

    @property
    def size(self) -> int:
        return int(self.item_ids.shape[0])

    def rows_of(self, ids: Sequence[str]) -> Rows:
        """Rows of the ids the catalogue knows, in the given order; unknown ids are dropped."""
        if not ids:
            return EMPTY_ROWS
        rows = np.fromiter(map(self.row_of.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        return rows[rows >= 0]

    def history(self, user: common_pb2.UserFeatures) -> History:
        """The user's items as the sources see them: the recent ones newest first, then the rest of what
        they have seen (in row order: only the recent ones' order matters to any source)."""
        recent = self.rows_of(list(user.recent_item_ids))
        seen = self.rows_of(list(user.seen_item_ids))
        rest = np.setdiff1d(seen, recent)
        return History.of(np.concatenate([recent, rest]))
