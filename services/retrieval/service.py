"""RetrievalService: candidate generation over the artifact's item index.

Strategy, by what the request carries:
  * `user_embedding` set        -> ANN search with it                          (source "ann")
  * else known `recent_item_ids` -> ANN search with the mean of their vectors  (source "recent")
  * else                         -> the popular list (cold start)              (source "popular")
When the search yields fewer than n candidates after exclusion, popular items not yet returned fill the
list (source "popular"). `exclude_item_ids` are never returned.

Scores: ANN candidates carry the inner product. Popular candidates carry a negative rank placed below
every ANN score of the same response: score = floor - i for the i-th popular candidate (i = 1, 2, ...),
where floor = min(0, last ANN score). So the whole list is sorted best first by score, and popular scores
of a pure cold-start response are -1, -2, -3, ...
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from opentelemetry import trace

from recsys.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common import candidates
from services.common.artifacts import ArtifactVersion
from services.common.config import option, port_number, positive
from services.common.rpc import handler, require, require_max_len
from services.common.server import ServerConfig
from services.common.versions import ServedVersions
from services.retrieval.index import EMPTY_ROWS, EMPTY_SCORES, ItemIndex

log = logging.getLogger(__name__)

MAX_EXCLUDE = 20_000
MAX_RECENT = 1_000

SOURCE_ANN = "ann"
SOURCE_RECENT = "recent"
SOURCE_POPULAR = "popular"
SOURCES = frozenset({SOURCE_ANN, SOURCE_RECENT, SOURCE_POPULAR})


@dataclass(frozen=True)
class Config(ServerConfig):
    port: int = option(50053, "port to listen on", port_number)
    max_candidates: int = option(2000, "largest n a Retrieve request may ask for", positive)


class RetrievalService(retrieval_pb2_grpc.RetrievalServiceServicer):
    """The gRPC servicer and the server Component (services.common.server.Component) in one."""

    name = "retrieval"
    service_name = "recsys.v1.RetrievalService"
    needs_artifacts = True

    def __init__(self, config: Config) -> None:
        self.config = config
        #: CURRENT plus the PINNED versions (experiment arms pick one with `artifact_version`).
        self.versions: ServedVersions[ItemIndex] = ServedVersions("retrieval")

    @property
    def _index(self) -> ItemIndex | None:
        return self.versions.current

    @property
    def index(self) -> ItemIndex | None:
        """The CURRENT index being served (None before the first successful load)."""
        return self.versions.current

    # --- Component ----------------------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(self, server)

    async def load(self, version: ArtifactVersion) -> None:
        """Build the new index completely off the event loop, then swap it in; raise to refuse it."""
        index = await asyncio.to_thread(ItemIndex.load, version)
        previous = self._index.version if self._index is not None else None
        self.versions.current = index
        log.info(
            "retrieval index loaded",
            extra={
                "version": version.version,
                "previous": previous,
                "items": index.size,
                "dim": index.dim,
                "faiss_index": type(index.index).__name__,
            },
        )

    async def load_pinned(self, version: ArtifactVersion) -> None:
        """Serve `version` beside CURRENT (listed in PINNED); raise to refuse it."""
        index = self.versions.reuse(version.version)
        if index is None:
            index = await asyncio.to_thread(ItemIndex.load, version)
        self.versions.pinned = {**self.versions.pinned, version.version: index}

    def unpin(self, name: str) -> None:
        self.versions.pinned = {k: v for k, v in self.versions.pinned.items() if k != name}

    async def close(self) -> None:
        self.versions.current = None
        self.versions.pinned = {}

    # --- RPC ----------------------------------------------------------------------------------------

    @handler("retrieval", "retrieve")
    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.RetrieveResponse:
        n = request.n
        require(
            1 <= n <= self.config.max_candidates, "n", f"must be in 1..{self.config.max_candidates}, got {n}"
        )
        require(
            len(request.user_id) <= 256,
            "user_id",
            f"must be at most 256 characters, got {len(request.user_id)}",
        )
        require_max_len(request.exclude_item_ids, "exclude_item_ids", MAX_EXCLUDE)
        require_max_len(request.recent_item_ids, "recent_item_ids", MAX_RECENT)
        unknown = set(request.sources) - SOURCES
        require(
            not unknown,
            "sources",
            f"unknown source(s) {sorted(unknown)}; known: {', '.join(sorted(SOURCES))}",
        )
        allowed = set(request.sources) or SOURCES
        # One reference for the whole request: a reload cannot change it midway.
        index = self.versions.get(request.artifact_version)

        vector: np.ndarray[Any, np.dtype[np.float32]] | None = None
        strategy = SOURCE_POPULAR
        if request.user_embedding and SOURCE_ANN in allowed:
            vector = np.asarray(request.user_embedding, dtype=np.float32)
            require(
                len(vector) == index.dim,
                "user_embedding",
                f"must have {index.dim} values (the index dimension), got {len(vector)}",
            )
            finite = np.isfinite(vector)
            bad = int(np.argmin(finite))
            require(
                bool(finite[bad]), "user_embedding", f"must be finite numbers, got {vector[bad]} at {bad}"
            )
            strategy = SOURCE_ANN
        elif request.recent_item_ids and SOURCE_RECENT in allowed:
            vector = index.fold_in(index.rows_of(request.recent_item_ids))
            if vector is not None:
                strategy = SOURCE_RECENT

        exclude = index.rows_of(request.exclude_item_ids)
        rows, scores = index.search(vector, n, exclude) if vector is not None else (EMPTY_ROWS, EMPTY_SCORES)
        blocks: list[candidates.Block] = [(index.ids_of(rows), scores, strategy)]
        topped_up = 0
        if len(rows) < n and SOURCE_POPULAR in allowed:
            more = index.popular(n - len(rows), np.concatenate([exclude, rows]) if len(rows) else exclude)
            floor = min(0.0, float(scores[-1])) if len(scores) else 0.0
            more_scores = floor - np.arange(1, len(more) + 1, dtype=np.float64)
            blocks.append((index.ids_of(more), more_scores, SOURCE_POPULAR))
            topped_up = len(more)
        response = retrieval_pb2.RetrieveResponse(
            candidates=candidates.build(blocks), artifact_version=index.version
        )

        span = trace.get_current_span()
        span.set_attribute("recsys.strategy", strategy)
        span.set_attribute("recsys.candidates", len(response.candidates.item_ids))
        span.set_attribute("recsys.popular_fill", topped_up)
        span.set_attribute("recsys.excluded", len(exclude))
        span.set_attribute("recsys.artifact_version", index.version)
        return response


def create(config: Config) -> RetrievalService:
    return RetrievalService(config)
