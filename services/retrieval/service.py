"""RetrievalService: the fused multi-source candidates of services.common.fusion, over the sources of
the requested artifact version, with every source's scores and ranks of every candidate in columns.

The history the sources score from is the request's `user` (recent items newest first, and everything
seen); it is never returned, nor are `exclude_item_ids`. A user without history gets popular items.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace

from recsys.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common import candidates
from services.common.artifacts import ArtifactVersion
from services.common.config import option, port_number, positive
from services.common.fusion import generate
from services.common.meters import meter
from services.common.rpc import handler, require, require_max_len
from services.common.server import ServerConfig
from services.common.sources import SOURCE_NAMES
from services.common.sources.base import exclusion
from services.common.versions import ServedVersions
from services.retrieval.model import RetrievalModel

log = logging.getLogger(__name__)
CANDIDATES = meter("retrieval").create_counter(
    "recsys.retrieval.candidates",
    unit="{item}",
    description="candidates sent to ranking, by the source that proposed each",
)

MAX_EXCLUDE = 20_000
MAX_HISTORY = 100_000


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
        self.versions: ServedVersions[RetrievalModel] = ServedVersions("retrieval")

    @property
    def model(self) -> RetrievalModel | None:
        """The CURRENT version being served (None before the first successful load)."""
        return self.versions.current

    # --- Component ----------------------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(self, server)

    async def load(self, version: ArtifactVersion) -> None:
        """Build the new model completely off the event loop, then swap it in; raise to refuse it."""
        model = await asyncio.to_thread(RetrievalModel.load, version)
        previous = self.model.version if self.model is not None else None
        self.versions.current = model
        log.info(
            "retrieval sources loaded",
            extra={
                "version": version.version,
                "previous": previous,
                "items": model.size,
                "sources": list(model.sources),
                "fused": list(model.fusion.fused),
            },
        )

    async def load_pinned(self, version: ArtifactVersion) -> None:
        """Serve `version` beside CURRENT (listed in PINNED); raise to refuse it."""
        model = self.versions.reuse(version.version)
        if model is None:
            model = await asyncio.to_thread(RetrievalModel.load, version)
        self.versions.pinned = {**self.versions.pinned, version.version: model}

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
        limit = self.config.max_candidates
        require(
            0 <= request.n <= limit,
            "n",
            f"must be in 0..{limit} (0: the version's own count), got {request.n}",
        )
        require(0 <= request.min_n <= limit, "min_n", f"must be in 0..{limit}, got {request.min_n}")
        require(
            len(request.user_id) <= 256,
            "user_id",
            f"must be at most 256 characters, got {len(request.user_id)}",
        )
        require_max_len(request.exclude_item_ids, "exclude_item_ids", MAX_EXCLUDE)
        require_max_len(request.user.seen_item_ids, "user.seen_item_ids", MAX_HISTORY)
        require_max_len(request.user.recent_item_ids, "user.recent_item_ids", MAX_HISTORY)
        unknown = set(request.sources) - set(SOURCE_NAMES)
        require(
            not unknown, "sources", f"unknown source(s) {sorted(unknown)}; known: {', '.join(SOURCE_NAMES)}"
        )
        # One reference for the whole request: a reload cannot change it midway.
        model = self.versions.get(request.artifact_version)
        n = max(request.n or model.fusion.candidates, request.min_n)
        history = model.history(request.user)
        exclude = exclusion(model.rows_of(list(request.exclude_item_ids)))
        found = generate(model.sources, history, n, model.fusion, exclude, list(request.sources))
        response = retrieval_pb2.RetrieveResponse(
            candidates=candidates.to_proto(found, model.item_ids), artifact_version=model.version
        )
        for source, count in Counter(found.origin).items():
            CANDIDATES.add(count, {"source": source})
        span = trace.get_current_span()
        span.set_attribute("recsys.candidates", len(found))
        span.set_attribute("recsys.history", len(history))
        span.set_attribute("recsys.excluded", int(exclude.size))
        span.set_attribute("recsys.artifact_version", model.version)
        return response


def create(config: Config) -> RetrievalService:
    return RetrievalService(config)
