"""RetrievalService: the fused multi-source candidates of services.common.fusion, over the sources of
the requested artifact version, with every source's scores and ranks of every candidate in columns.

The history the sources score from is the request's `user` (recent items newest first, and everything
seen); it is never returned, nor are `exclude_item_ids`. A user without history gets popular items.

The live catalogue (upserts, hidden items) is mirrored from the features service
(services.common.catalogue): a request carrying a newer `catalogue_version` than the mirror's waits for
the mirror to catch up, or is UNAVAILABLE (the gateway then serves its own filtered fallback), so a
hidden item is never returned once the hide was acknowledged. Filters and hidden items exclude rows
from every source (services.retrieval.catalogue); upserted items the version does not know follow the
fused candidates as `fresh` ones, scored by content.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from opentelemetry import trace

from recsys.v1 import common_pb2, features_pb2, features_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common import candidates
from services.common.artifacts import ArtifactVersion
from services.common.catalogue import FRESH, CatalogueMirror, Fetch, MirrorState, check_filter
from services.common.config import non_negative, option, port_number, positive
from services.common.fusion import POPULAR, generate
from services.common.loops import PeriodicTask
from services.common.meters import meter
from services.common.rpc import NotReady, handler, require, require_id, require_max_len
from services.common.server import ServerConfig, channel_options
from services.common.sources import SOURCE_NAMES
from services.common.sources.base import History, exclusion
from services.common.sources.vectors import VectorScores, VectorSource
from services.common.tls import ClientTLS, aio_channel
from services.common.versions import ServedVersions
from services.retrieval.catalogue import LiveCatalogue
from services.retrieval.model import RetrievalModel

log = logging.getLogger(__name__)
CANDIDATES = meter("retrieval").create_counter(
    "recsys.retrieval.candidates",
    unit="{item}",
    description="candidates sent to ranking, by the source that proposed each",
)

MAX_EXCLUDE = 20_000
MAX_HISTORY = 100_000


MAX_K = 1000


@dataclass(frozen=True)
class Config(ServerConfig):
    port: int = option(50053, "port to listen on", port_number)
    max_candidates: int = option(2000, "largest n a Retrieve request may ask for", positive)
    features_addr: str = option(
        "127.0.0.1:50052", "features service address: where the live catalogue is mirrored from"
    )
    features_tls_ca: Path | None = option(
        None, "PEM CA certificates the features service's certificate chains to: call it over TLS"
    )
    features_tls_client_cert: Path | None = option(
        None,
        "PEM certificate to present to the features service (mutual TLS), with --features-tls-client-key",
    )
    features_tls_client_key: Path | None = option(None, "PEM key of --features-tls-client-cert")
    features_tls_server_name: str | None = option(
        None, "name to expect in the features service's certificate (default: the host of the address)"
    )
    catalogue_poll_s: float = option(
        1.0, "how often to look for catalogue changes between requests", positive
    )
    fresh_candidates: int = option(
        20, "upserted items the version does not know, appended to the candidates (by content)", non_negative
    )

    def features_tls(self) -> ClientTLS | None:
        given = (
            self.features_tls_ca,
            self.features_tls_client_cert,
            self.features_tls_client_key,
            self.features_tls_server_name,
        )
        return None if all(v is None for v in given) else ClientTLS(*given, flags="--features-tls")

    def validate(self) -> None:
        super().validate()
        self.features_tls()  # a certificate without its key (or the reverse) is refused here


class RetrievalService(retrieval_pb2_grpc.RetrievalServiceServicer):
    """The gRPC servicer and the server Component (services.common.server.Component) in one."""

    name = "retrieval"
    service_name = "recsys.v1.RetrievalService"
    needs_artifacts = True

    def __init__(self, config: Config, fetch_catalogue: Fetch | None = None) -> None:
        """`fetch_catalogue`: where the live catalogue's changes come from (default: the features
        service at --features-addr)."""
        self.config = config
        #: CURRENT plus the PINNED versions (experiment arms pick one with `artifact_version`).
        self.versions: ServedVersions[RetrievalModel] = ServedVersions("retrieval")
        self.mirror = CatalogueMirror(fetch_catalogue or self._fetch_catalogue)
        self._features: Any = None  # a FeatureServiceStub on an aio channel, made at the first fetch
        self._channel: grpc.aio.Channel | None = None
        self._poll: PeriodicTask | None = None
        #: the LiveCatalogue of each served version, for the mirror state it was built from
        self._live: dict[str, LiveCatalogue] = {}

    async def _fetch_catalogue(self, after: int) -> features_pb2.GetCatalogueResponse:
        if self._features is None:
            self._channel = aio_channel(
                self.config.features_addr, self.config.features_tls(), channel_options()
            )
            self._features = features_pb2_grpc.FeatureServiceStub(self._channel)
        reply: features_pb2.GetCatalogueResponse = await self._features.GetCatalogue(
            features_pb2.GetCatalogueRequest(after_version=after), timeout=2.0
        )
        return reply

    async def _poll_catalogue(self) -> None:
        try:
            await self.mirror.catch_up()
        except grpc.aio.AioRpcError as e:
            log.debug("catalogue not refreshed", extra={"code": e.code().name})

    async def catalogue(self, version: int, budget_s: float | None) -> MirrorState:
        """The mirror at catalogue `version` or later; NotReady (UNAVAILABLE) when it cannot catch up."""
        state = self.mirror.state
        if version <= state.version:
            return state
        try:
            return await asyncio.wait_for(self.mirror.catch_up(version), budget_s)
        except (grpc.aio.AioRpcError, TimeoutError) as e:
            raise NotReady(
                f"retrieval: live catalogue at version {state.version}, the request needs {version} and the "
                f"features service did not answer ({e.__class__.__name__})"
            ) from e

    def live(self, model: RetrievalModel, state: MirrorState) -> LiveCatalogue:
        built = self._live.get(model.version)
        if built is None or built.version != state.version:
            built = LiveCatalogue.build(state, model.row_of, model.content_space)
            self._live = {**self._live, model.version: built}
        return built

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
        if self._poll is None:
            self._poll = PeriodicTask("catalogue-mirror", self._poll_catalogue, self.config.catalogue_poll_s)
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
        if self._poll is not None:
            await self._poll.stop()
        if self._channel is not None:
            await self._channel.close(None)
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
        unknown = set(request.sources) - {*SOURCE_NAMES, FRESH}
        require(
            not unknown,
            "sources",
            f"unknown source(s) {sorted(unknown)}; known: {', '.join((*SOURCE_NAMES, FRESH))}",
        )
        # One reference for the whole request: a reload cannot change it midway.
        model = self.versions.get(request.artifact_version)
        live = self.live(model, await self.catalogue(request.catalogue_version, _remaining(context)))
        check_filter(request.filter, live.attributes)
        n = max(request.n or model.fusion.candidates, request.min_n)
        history = model.history(request.user)
        exclude = exclusion(
            model.rows_of(list(request.exclude_item_ids)),
            live.excluded_rows(request.filter, model.categories),
        )
        found = generate(model.sources, history, n, model.fusion, exclude, list(request.sources))
        response = retrieval_pb2.RetrieveResponse(
            candidates=candidates.to_proto(found, model.item_ids), artifact_version=model.version
        )
        if self.config.fresh_candidates and live.fresh and (not request.sources or FRESH in request.sources):
            skip = frozenset({*request.exclude_item_ids, *request.user.seen_item_ids})
            response.fresh.extend(
                fresh_items(
                    live, _content_query(model, history), request.filter, skip, self.config.fresh_candidates
                )
            )
        for source, count in Counter(found.origin).items():
            CANDIDATES.add(count, {"source": source})
        if response.fresh:
            CANDIDATES.add(len(response.fresh), {"source": FRESH})
        span = trace.get_current_span()
        span.set_attribute("recsys.candidates", len(found))
        span.set_attribute("recsys.history", len(history))
        span.set_attribute("recsys.excluded", int(exclude.size))
        span.set_attribute("recsys.artifact_version", model.version)
        return response

    @handler("retrieval", "similar_items")
    async def SimilarItems(
        self, request: retrieval_pb2.RetrievalSimilarRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> retrieval_pb2.RetrievalSimilarResponse:
        require_id(request.item_id, "item_id")
        require(1 <= request.k <= MAX_K, "k", f"must be in 1..{MAX_K}, got {request.k}")
        model = self.versions.get(request.artifact_version)
        live = self.live(model, await self.catalogue(request.catalogue_version, _remaining(context)))
        check_filter(request.filter, live.attributes)
        items = similar_items(model, live, request.item_id, request.k, request.filter)
        if items is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"item_id: {request.item_id!r} is not in the catalogue (artifact {model.version}, live "
                f"catalogue {live.version}) or is hidden",
            )
        return retrieval_pb2.RetrievalSimilarResponse(items=items, artifact_version=model.version)


def _remaining(context: grpc.aio.ServicerContext[Any, Any] | None) -> float | None:
    """The call's time left (None: no deadline, or a handler called in-process without a context)."""
    return context.time_remaining() if context is not None else None


def _fresh_order(
    live: LiveCatalogue, allowed: np.ndarray[Any, Any], query: np.ndarray[Any, Any] | None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`allowed` fresh positions best first by content (by publish time, newest first, without a query)."""
    if query is not None:
        scores = (live.fresh_vectors[allowed] @ query).astype(np.float32)
    else:
        scores = np.zeros(allowed.size, dtype=np.float32)
    order = np.lexsort((-live.fresh_published[allowed], -scores))
    return allowed[order], scores[order]


def _content_query(model: RetrievalModel, history: History) -> np.ndarray[Any, Any] | None:
    content = model.sources.get("content")
    return content.query(history) if isinstance(content, VectorSource) and len(history) else None


def fresh_items(
    live: LiveCatalogue,
    query: np.ndarray[Any, Any] | None,
    item_filter: common_pb2.ItemFilter,
    skip: frozenset[str],
    limit: int,
) -> list[common_pb2.ScoredItem]:
    """Upserted items the version does not know, best first by content against `query` (the newest
    first without one), none of `skip`."""
    allowed = live.fresh_allowed(item_filter, skip)
    if not allowed.size:
        return []
    picked, scores = _fresh_order(live, allowed, query)
    return [
        common_pb2.ScoredItem(item_id=live.fresh[j].item_id, score=float(v), source=FRESH)
        for j, v in zip(picked[:limit].tolist(), scores[:limit].tolist(), strict=True)
    ]


def similar_items(
    model: RetrievalModel, live: LiveCatalogue, item_id: str, k: int, item_filter: common_pb2.ItemFilter
) -> list[common_pb2.ScoredItem] | None:
    """The items like `item_id` (None when it is unknown or hidden): for a trained item, the version's
    sources fused over a history of that one item; for an upserted one, content similarity."""
    if item_id in live.hidden_ids:
        return None
    excluded = live.excluded_rows(item_filter, model.categories)
    row = model.row_of.get(item_id)
    if row is not None:
        sources = [s for s in model.sources if s != POPULAR]  # what is like the item, not what is popular
        found = generate(model.sources, History.of([row]), k, model.fusion, excluded, sources)
        return candidates.head(candidates.to_proto(found, model.item_ids), k)
    fresh = {item.item_id: j for j, item in enumerate(live.fresh)}
    if item_id not in fresh:
        return None
    query = live.fresh_vectors[fresh[item_id]]
    content = model.sources.get("content")
    out: list[common_pb2.ScoredItem] = []
    if isinstance(content, VectorSource) and np.any(query):
        rows, scores = VectorScores(query, content.vectors, content.index).top(k, excluded)
        out = [
            common_pb2.ScoredItem(item_id=str(model.item_ids[r]), score=float(v), source="content")
            for r, v in zip(rows.tolist(), scores.tolist(), strict=True)
        ]
    out += fresh_items(live, query, item_filter, frozenset({item_id}), k)
    out.sort(key=lambda i: -i.score)
    return out[:k]


def create(config: Config) -> RetrievalService:
    return RetrievalService(config)
