"""The public API: Recommend (features -> retrieval -> item features -> ranking, with per-stage
deadlines and fallbacks) and Feedback (forwarded to the features service's event log)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from recsys.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    ranking_pb2,
    ranking_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.artifacts import ArtifactVersion
from services.common.config import option, positive
from services.common.rpc import handler, require, require_id, require_max_len
from services.common.server import ServerConfig, channel_options
from services.common.telemetry import current_trace_id
from services.gateway import experiments

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_EXCLUDE = 1000
MAX_CONTEXT = 64

T = TypeVar("T")


def _valid_candidates(value: int) -> str | None:
    return None if 1 <= value <= 2000 else "must be in 1..2000"


@dataclass(frozen=True)
class Config(ServerConfig):
    port: int = option(50051, "port to listen on")
    features_addr: str = option("127.0.0.1:50052", "features service address (host:port or dns:///name:port)")
    retrieval_addr: str = option("127.0.0.1:50053", "retrieval service address")
    ranking_addr: str = option("127.0.0.1:50054", "ranking service address")
    experiments: Path = option(experiments.DEFAULT_FILE, "experiments YAML file")
    candidates: int = option(500, "candidates retrieval returns for ranking", _valid_candidates)
    features_timeout_ms: float = option(200.0, "deadline of each features call", positive)
    retrieval_timeout_ms: float = option(300.0, "deadline of the retrieval call", positive)
    ranking_timeout_ms: float = option(500.0, "deadline of the ranking call", positive)

    def validate(self) -> None:
        # Fail at start, not at the first request, on a bad experiments file.
        experiments.load(self.experiments)


def _channel(address: str) -> grpc.aio.Channel:
    # round_robin balances over every address a dns:/// name resolves to (one per replica).
    options: list[tuple[str, Any]] = [*channel_options(), ("grpc.lb_policy_name", "round_robin")]
    return grpc.aio.insecure_channel(address, options=options)


class StageFailed(Exception):
    def __init__(self, stage: str, code: str) -> None:
        super().__init__(f"{stage}: {code}")
        self.stage = stage


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.experiments = experiments.load(config.experiments)
        self._channels = [
            _channel(a) for a in (config.features_addr, config.retrieval_addr, config.ranking_addr)
        ]
        self.features = features_pb2_grpc.FeatureServiceStub(self._channels[0])
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self._channels[1])
        self.ranking = ranking_pb2_grpc.RankingServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def _call(self, stage: str, call: Awaitable[T], timings: dict[str, float]) -> T:
        """Await one stage's RPC, timing it; a failure of any kind becomes StageFailed(stage)."""
        start = time.perf_counter()
        try:
            return await call
        except grpc.aio.AioRpcError as e:
            raise StageFailed(stage, e.code().name) from e
        finally:
            timings[stage] = (time.perf_counter() - start) * 1000

    @handler("gateway", "recommend")
    async def Recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.RecommendResponse:
        started = time.perf_counter()
        require_id(request.user_id, "user_id")
        require(1 <= request.k <= MAX_K, "k", f"must be in 1..{MAX_K}, got {request.k}")
        require_max_len(request.exclude_item_ids, "exclude_item_ids", MAX_EXCLUDE)
        require_max_len(request.context, "context", MAX_CONTEXT)

        assignments = experiments.assign(self.experiments, request.user_id)
        settings = experiments.settings_for(assignments, self.config.candidates)
        span = trace.get_current_span()
        for exp, arm in assignments:
            span.set_attribute(f"recsys.experiment.{exp.id}", arm.name)
        timings: dict[str, float] = {}
        degraded: list[str] = []
        cfg = self.config

        try:
            user = (
                await self._call(
                    "features",
                    self.features.GetUserFeatures(
                        features_pb2.GetUserFeaturesRequest(user_id=request.user_id),
                        timeout=cfg.features_timeout_ms / 1000,
                    ),
                    timings,
                )
            ).user
        except StageFailed as e:
            # Without the profile, retrieval falls back to popular items for this user.
            degraded.append(str(e))
            user = common_pb2.UserFeatures(user_id=request.user_id)

        exclude = list(dict.fromkeys([*request.exclude_item_ids, *user.seen_item_ids]))
        try:
            retrieved = await self._call(
                "retrieval",
                self.retrieval.Retrieve(
                    retrieval_pb2.RetrieveRequest(
                        user_id=request.user_id,
                        user_embedding=user.embedding,
                        recent_item_ids=user.recent_item_ids,
                        exclude_item_ids=exclude,
                        n=max(settings.candidates, request.k),
                    ),
                    timeout=cfg.retrieval_timeout_ms / 1000,
                ),
                timings,
            )
        except StageFailed as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no candidates: {e}")
            raise  # unreachable: abort raises
        candidates = list(retrieved.candidates)
        version = retrieved.artifact_version
        items = candidates[: request.k]

        if settings.ranking and candidates:
            try:
                rows = await self._call(
                    "item_features",
                    self.features.GetItemFeatures(
                        features_pb2.GetItemFeaturesRequest(item_ids=[c.item_id for c in candidates]),
                        timeout=cfg.features_timeout_ms / 1000,
                    ),
                    timings,
                )
                ranked = await self._call(
                    "ranking",
                    self.ranking.Rank(
                        ranking_pb2.RankRequest(
                            user=user,
                            candidates=candidates,
                            item_features=rows.values,
                            item_feature_dim=rows.dim,
                            k=request.k,
                        ),
                        timeout=cfg.ranking_timeout_ms / 1000,
                    ),
                    timings,
                )
                items = list(ranked.items)
                version = ranked.artifact_version or version
            except StageFailed as e:
                # Retrieval order is a valid (if weaker) ranking.
                degraded.append(str(e))

        timings["total"] = (time.perf_counter() - started) * 1000
        span.set_attribute("recsys.degraded", bool(degraded))
        span.set_attribute("recsys.candidates", len(candidates))
        if degraded:
            log.warning("degraded response", extra={"user_id": request.user_id, "reasons": degraded})
        return gateway_pb2.RecommendResponse(
            items=items,
            assignments=[
                gateway_pb2.ExperimentAssignment(experiment=e.id, arm=a.name) for e, a in assignments
            ],
            degraded=bool(degraded),
            degraded_reasons=degraded,
            timings=[gateway_pb2.StageTiming(stage=s, ms=ms) for s, ms in timings.items()]
            if request.debug
            else [],
            trace_id=current_trace_id(),
            artifact_version=version,
        )

    @handler("gateway", "feedback")
    async def Feedback(
        self, request: gateway_pb2.FeedbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.FeedbackResponse:
        # The features service validates every event and writes all or nothing; its status is ours.
        try:
            written = await self.features.WriteEvents(
                features_pb2.WriteEventsRequest(events=request.events),
                timeout=self.config.features_timeout_ms / 1000,
            )
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or e.code().name)
            raise  # unreachable: abort raises
        return gateway_pb2.FeedbackResponse(accepted=written.written)


class Gateway:
    name = "gateway"
    service_name = "recsys.v1.Gateway"
    # The gateway holds no artifacts: it is SERVING as soon as it listens, and degrades per stage.
    needs_artifacts = False

    def __init__(self, config: Config) -> None:
        self.servicer = GatewayServicer(config)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(self.servicer, server)

    async def load(self, version: ArtifactVersion) -> None:
        raise NotImplementedError("the gateway loads no artifacts")

    async def close(self) -> None:
        await self.servicer.close()


def create(config: Config) -> Gateway:
    return Gateway(config)
