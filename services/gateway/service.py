"""The public API: Recommend (features -> retrieval -> ranking, with per-stage deadlines and
fallbacks), Feedback (forwarded to the features service's event log), SimilarItems (retrieval), and
the live catalogue's writes (UpsertItems, HideItems, UnhideItems: the features service keeps it)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from opentelemetry import trace

from recsys.v1 import (
    common_pb2,
    features_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    ranking_pb2,
    retrieval_pb2,
)
from services.common import candidates
from services.common.artifacts import ArtifactVersion
from services.common.catalogue import CatalogueMirror, check_filter, ids_from_request, items_from_request
from services.common.config import ConfigError, non_negative, option, positive
from services.common.event_ids import new_event_id
from services.common.loops import PeriodicTask
from services.common.meters import meter
from services.common.rpc import handler, require, require_id, require_max_len
from services.common.server import ServerConfig
from services.common.telemetry import current_trace_id, tracer
from services.common.tls import ClientTLS
from services.features.requests import events_from_request
from services.gateway import auth, experiments, keys
from services.gateway.admission import Admission
from services.gateway.backends import Backends
from services.gateway.budgets import Budget
from services.gateway.exposures import ExposureLogger
from services.gateway.interleaving import team_draft

log = logging.getLogger(__name__)
STAGE_DURATION = meter("gateway").create_histogram(
    "recsys.gateway.stage.duration", unit="ms", description="wall time of each gateway stage"
)
DEGRADED = meter("gateway").create_counter(
    "recsys.gateway.degraded", unit="{response}", description="responses a fallback answered, by stage"
)

MAX_K = 1000
#: Pause between Feedback attempts while the features service is unavailable.
FEEDBACK_RETRY_S = 0.05
MAX_EXCLUDE = 1000
MAX_CONTEXT = 64

T = TypeVar("T")


class CatalogueWrite(Protocol):
    """A reply of the catalogue's writes (UpsertItemsResponse, HideItemsResponse)."""

    @property
    def catalogue_version(self) -> int: ...


W = TypeVar("W", bound=CatalogueWrite)


def _valid_candidates(value: int) -> str | None:
    return None if 0 <= value <= 2000 else "must be in 0..2000"


@dataclass(frozen=True)
class Config(ServerConfig):
    port: int = option(50051, "port to listen on")
    features_addr: str = option("127.0.0.1:50052", "features service address (host:port or dns:///name:port)")
    retrieval_addr: str = option("127.0.0.1:50053", "retrieval service address")
    ranking_addr: str = option("127.0.0.1:50054", "ranking service address")
    experiments: Path = option(experiments.DEFAULT_FILE, "experiments YAML file")
    candidates: int = option(
        0,
        "candidates retrieval returns for ranking (0: as many as the served version was trained with)",
        _valid_candidates,
    )
    total_budget_ms: float = option(100.0, "latency budget of a whole Recommend", positive)
    features_budget_ms: float = option(25.0, "budget of the features call (the user's profile)", positive)
    retrieval_budget_ms: float = option(30.0, "budget of the retrieval call", positive)
    ranking_budget_ms: float = option(40.0, "budget of the ranking call", positive)
    popular_refresh_s: float = option(30.0, "how often to refresh the cached popular list", positive)
    experiments_reload_s: float = option(1.0, "how often to look for a changed experiments file", positive)
    log_exposures: bool = option(True, "write an EXPOSURE event per (user, experiment, arm) served")
    exposure_spool: Path = option(
        Path("var/spool/exposures.jsonl"),
        "local file exposures wait in until the features service has them (one per gateway process)",
    )
    exposure_spool_max_mb: float = option(
        64.0, "size limit of the exposure spool (past it: dropped)", positive
    )
    feedback_budget_ms: float = option(
        1000.0, "time a Feedback may take, retries on another features replica included", positive
    )
    # 4 in flight and 4 queued: on 2 cores the services' throughput stops growing at 4-5 in flight, so
    # more only adds latency (bench/shedding.py), and 8 callers in a closed loop still fit without a
    # refusal. The queue holds at most what 4 slots drain in about one service time; a request that
    # has waited half the 100 ms budget is shed, the other half is for serving it.
    max_in_flight: int = option(
        4,
        "Recommends run at once; more wait in a short queue, then RESOURCE_EXHAUSTED (0: no limit)",
        non_negative,
    )
    max_queued: int = option(
        4, "Recommends that may wait for a slot (past it: refused at once)", non_negative
    )
    queue_ms: float = option(50.0, "how long a queued Recommend may wait for a slot", positive)
    overload_queue_ms: float = option(
        5.0, "how long it may wait for 100 ms after a Recommend found the queue full (overload)", positive
    )
    api_keys_file: Path | None = option(
        None,
        "API keys file (`recsys keys add`): every call then needs `authorization: Bearer <key>` with the "
        "method's role; unset: no authentication, which needs a loopback --host or --allow-unauthenticated",
    )
    api_keys_reload_s: float = option(2.0, "how often to look for a changed API keys file", positive)
    auth_health: bool = option(
        False, "health checks need an API key too (the kubelet's gRPC probes cannot send one)"
    )
    auth_reflection: bool = option(False, "reflection needs an API key too")
    allow_unauthenticated: bool = option(
        False,
        "serve without API keys on a non-loopback --host: anyone who reaches the gateway may call every RPC",
    )
    backend_tls_ca: Path | None = option(
        None, "PEM CA certificates the backends' certificates chain to: call the backends over TLS"
    )
    backend_tls_client_cert: Path | None = option(
        None,
        "PEM certificate the gateway presents to the backends (mutual TLS), with --backend-tls-client-key",
    )
    backend_tls_client_key: Path | None = option(None, "PEM key of --backend-tls-client-cert")
    backend_tls_server_name: str | None = option(
        None, "name to expect in every backend's certificate (default: the host of each address)"
    )
    backend_tls_reload_s: float = option(
        5.0, "how often to look for changed --backend-tls-* files (then: new channels)", positive
    )

    def backend_tls(self) -> ClientTLS | None:
        """TLS to the backends: on when any --backend-tls-* setting is given."""
        given = (
            self.backend_tls_ca,
            self.backend_tls_client_cert,
            self.backend_tls_client_key,
            self.backend_tls_server_name,
        )
        return None if all(v is None for v in given) else ClientTLS(*given, flags="--backend-tls")

    def validate(self) -> None:
        super().validate()
        self.backend_tls()  # a certificate without its key (or the reverse) is refused here
        # Fail at start, not at the first request, on a bad experiments or keys file.
        experiments.load(self.experiments)
        if self.api_keys_file is not None:
            if self.allow_unauthenticated:
                raise ConfigError("--allow-unauthenticated contradicts --api-keys-file: choose one")
            keys.load(self.api_keys_file)
            return
        for flag, required in (
            ("--auth-health", self.auth_health),
            ("--auth-reflection", self.auth_reflection),
        ):
            if required:
                raise ConfigError(f"{flag} needs --api-keys-file (RECSYS_API_KEYS_FILE)")
        if not auth.is_loopback(self.host) and not self.allow_unauthenticated:
            # Exposure without authentication must be a choice someone made, not a default (cf. Gorse's
            # open admin API, gorse-io/gorse#1292: anyone reaching it could write feedback).
            raise ConfigError(
                f"--host {self.host} is reachable from other machines and no --api-keys-file "
                "(RECSYS_API_KEYS_FILE) is set: anyone could call the gateway. Give it an API keys file "
                "(`recsys keys add`), or --allow-unauthenticated (RECSYS_ALLOW_UNAUTHENTICATED=true) to "
                "serve openly on purpose"
            )


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return ""


class StageFailed(Exception):
    def __init__(self, stage: str, code: str, details: str = "") -> None:
        super().__init__(f"{stage}: {code}")
        self.stage = stage
        self.code = code
        self.details = details

    def version_not_served(self, version: str) -> bool:
        """The stage does not serve the pinned `version` the arm asked for (the caller retries on CURRENT)."""
        return bool(version) and self.code == "FAILED_PRECONDITION"


@dataclass
class Served:
    """What one pipeline (one artifact version) produced for a request."""

    items: list[common_pb2.ScoredItem]
    version: str
    candidates: int = 0
    #: with `explain`: the ranker's explanation of each ranked item, by id
    explanations: dict[str, common_pb2.Explanation] = field(default_factory=dict)


def explanations(served: Served, degraded: list[str]) -> list[common_pb2.Explanation]:
    """One per served item: the ranker's, or one saying why there is none (the item was not ranked)."""
    why = "; ".join(degraded) or "not ranked: the arm serves the retrieval order"
    return [
        served.explanations.get(item.item_id)
        or common_pb2.Explanation(item_id=item.item_id, sources=[item.source], unavailable=why)
        for item in served.items
    ]


@dataclass
class Trip:
    """One Recommend on its way through the stages: its budget, stage timings, degradation reasons."""

    budget: Budget
    timings: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)


class PopularCache:
    """The popular list, fetched from retrieval in the background: what the gateway serves when
    retrieval itself cannot answer."""

    SIZE = 1000

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.items: list[common_pb2.ScoredItem] = []
        self.version = ""

    async def refresh(self) -> None:
        try:
            # No history: retrieval answers with its popular items.
            reply = await self.backends.retrieval.Retrieve(
                retrieval_pb2.RetrieveRequest(user_id="recsys-gateway-popular", n=self.SIZE), timeout=5.0
            )
        except grpc.aio.AioRpcError as e:
            log.warning(
                "popular list not refreshed", extra={"code": e.code().name, "cached": len(self.items)}
            )
            return
        changed = not self.items or reply.artifact_version != self.version
        self.items, self.version = candidates.head(reply.candidates, self.SIZE), reply.artifact_version
        if changed:
            log.info("popular list refreshed", extra={"items": len(self.items), "version": self.version})


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.reloader = experiments.Reloader(config.experiments)
        self.backends = Backends(
            (config.features_addr, config.retrieval_addr, config.ranking_addr), config.backend_tls()
        )
        self.exposures = ExposureLogger(
            self._write_exposures, config.exposure_spool, max_bytes=int(config.exposure_spool_max_mb * 2**20)
        )
        self.admission = Admission(
            config.max_in_flight,
            config.max_queued,
            config.queue_ms,
            config.overload_queue_ms,
        )
        self.popular = PopularCache(self.backends)
        #: the hidden items, so that the cached popular list never serves one
        self.catalogue = CatalogueMirror(
            lambda after: self.backends.features.GetCatalogue(
                features_pb2.GetCatalogueRequest(after_version=after), timeout=2.0
            )
        )
        self._watch: PeriodicTask | None = None
        self._next_popular = 0.0
        self._rng = random.Random()

    @property
    def experiment_config(self) -> experiments.Config:
        return self.reloader.config

    async def _write_exposures(self, events: list[common_pb2.Event]) -> None:
        await self.backends.features.WriteEvents(
            features_pb2.WriteEventsRequest(events=events),
            timeout=max(1.0, self.config.features_budget_ms / 100),
        )

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = PeriodicTask("gateway-upkeep", self._upkeep, self.config.experiments_reload_s)
            self.exposures.start()  # what an earlier process left in the spool goes out too

    async def _upkeep(self) -> None:
        """Reload a changed experiments file; refresh the cached popular list when it is due; follow the
        live catalogue."""
        try:
            await self.catalogue.catch_up()
        except grpc.aio.AioRpcError as e:
            log.debug("catalogue not refreshed", extra={"code": e.code().name})
        if time.monotonic() >= self._next_popular:
            await self.popular.refresh()
            self._next_popular = time.monotonic() + (
                self.config.popular_refresh_s if self.popular.items else 1.0
            )
        try:
            self.reloader.poll()
        except Exception:  # never let the watcher die: the old config keeps serving
            log.exception("experiments reload failed")

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
        await self.exposures.close()
        await self.backends.close()

    async def _stage(
        self, trip: Trip, stage: str, budget_ms: float, call: Callable[[float], Awaitable[T]]
    ) -> T:
        """Run one stage's RPC in span `recsys.gateway.<stage>` with a deadline from the budgets.

        Any failure, or too little budget left to try, becomes StageFailed(stage) for the caller's
        fallback. The span records the stage budget, whether it ran over, and whether it degraded."""
        name = stage.rsplit(".", 1)[-1]
        with tracer("gateway").start_as_current_span(f"recsys.gateway.{name}") as span:
            span.set_attribute("recsys.budget_ms", budget_ms)
            span.set_attribute("recsys.stage", stage)
            start = time.perf_counter()
            try:
                deadline = trip.budget.deadline_s(budget_ms)
                if deadline is None:
                    raise StageFailed(stage, "BUDGET_EXHAUSTED")
                try:
                    return await call(deadline)
                except grpc.aio.AioRpcError as e:
                    raise StageFailed(stage, e.code().name, e.details() or "") from e
            except StageFailed:
                span.set_attribute("recsys.degraded", True)
                raise
            finally:
                elapsed = (time.perf_counter() - start) * 1000
                trip.timings[stage] = elapsed
                STAGE_DURATION.record(elapsed, {"stage": name})
                span.set_attribute("recsys.over_budget", elapsed > budget_ms)

    async def _popular(
        self,
        trip: Trip,
        request: gateway_pb2.RecommendRequest,
        exclude: set[str],
        catalogue_version: int,
        reason: StageFailed,
    ) -> Served:
        """The cached popular list (minus `exclude` and the hidden items) when retrieval cannot answer.
        Not for a filtered request: the gateway does not know the items' categories."""
        if request.HasField("filter") and request.filter.ByteSize():
            raise reason
        try:
            hidden = (await self.catalogue.catch_up(catalogue_version)).hidden
        except grpc.aio.AioRpcError:
            hidden = self.catalogue.state.hidden
            if catalogue_version > self.catalogue.state.version:
                raise reason from None  # a hide it cannot see yet: serving nothing beats serving that
        items = [i for i in self.popular.items if i.item_id not in exclude and i.item_id not in hidden]
        items = items[: request.k]
        if not items:
            raise reason
        trip.degraded.append(f"{reason}; served cached popular items")
        return Served(items, self.popular.version, len(items))

    async def _pipeline(
        self,
        request: gateway_pb2.RecommendRequest,
        settings: experiments.Settings,
        version: str,
        trip: Trip,
        prefix: str = "",
    ) -> Served:
        """features -> retrieval -> ranking, every stage at artifact `version`.

        Fallbacks: no profile -> retrieval for a cold user; no retrieval -> the cached popular list; no
        ranking -> retrieval order. A stage that does not serve `version`
        (FAILED_PRECONDITION) raises StageFailed instead: the caller falls back to CURRENT."""
        cfg = self.config
        # Without a profile, retrieval answers from the catalogue the gateway has seen.
        catalogue_version = self.catalogue.state.version
        try:
            profile = await self._stage(
                trip,
                prefix + "features",
                cfg.features_budget_ms,
                lambda timeout: self.backends.features.GetUserFeatures(
                    features_pb2.GetUserFeaturesRequest(user_id=request.user_id, artifact_version=version),
                    timeout=timeout,
                ),
            )
            user, catalogue_version = profile.user, max(catalogue_version, profile.catalogue_version)
        except StageFailed as e:
            if e.version_not_served(version):
                raise
            trip.degraded.append(str(e))
            user = common_pb2.UserFeatures(user_id=request.user_id)

        try:
            retrieved = await self._stage(
                trip,
                prefix + "retrieval",
                cfg.retrieval_budget_ms,
                lambda timeout: self.backends.retrieval.Retrieve(
                    retrieval_pb2.RetrieveRequest(
                        user_id=request.user_id,
                        user=user,
                        exclude_item_ids=request.exclude_item_ids,
                        n=settings.candidates,
                        min_n=request.k,
                        artifact_version=version,
                        sources=settings.sources,
                        filter=request.filter,
                        catalogue_version=catalogue_version,
                    ),
                    timeout=timeout,
                ),
            )
        except StageFailed as e:
            if e.version_not_served(version) or e.code == "INVALID_ARGUMENT":
                raise  # a filter naming an attribute no item has: the caller's error, not an outage
            exclude = {*request.exclude_item_ids, *user.seen_item_ids}
            return await self._popular(trip, request, exclude, catalogue_version, e)
        found = retrieved.candidates
        count = len(found.item_ids)
        trace.get_current_span().set_attribute("recsys.candidates", count)
        served = Served(candidates.head(found, request.k), retrieved.artifact_version, count)
        if not (settings.ranking and (count or retrieved.fresh)):
            return served
        try:
            ranked = await self._stage(
                trip,
                prefix + "ranking",
                cfg.ranking_budget_ms,
                lambda timeout: self.backends.ranking.Rank(
                    ranking_pb2.RankRequest(
                        user=user,
                        candidates=found,
                        k=request.k,
                        artifact_version=version,
                        mmr_lambda=settings.diversity,
                        explain=request.explain,
                        fresh=retrieved.fresh,
                    ),
                    timeout=timeout,
                ),
            )
        except StageFailed as e:
            if e.version_not_served(version):
                raise
            trip.degraded.append(f"{e}; served retrieval order")
            return served
        served.items = list(ranked.items)
        served.version = ranked.artifact_version or served.version
        served.explanations = {e.item_id: e for e in ranked.explanations}
        return served

    async def _serve_version(
        self,
        request: gateway_pb2.RecommendRequest,
        settings: experiments.Settings,
        version: str,
        trip: Trip,
        prefix: str = "",
    ) -> Served:
        """The pipeline at `version`; when a stage does not serve it, the pipeline at CURRENT (degraded)."""
        try:
            return await self._pipeline(request, settings, version, trip, prefix)
        except StageFailed as e:
            if not e.version_not_served(version):
                raise
            trip.degraded.append(f"{e}: artifact version {version} not served, CURRENT used")
            return await self._pipeline(request, settings, "", trip, prefix)

    @handler("gateway", "recommend")
    async def Recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.RecommendResponse:
        trip = Trip(Budget(self.config.total_budget_ms))
        require_id(request.user_id, "user_id")
        require(1 <= request.k <= MAX_K, "k", f"must be in 1..{MAX_K}, got {request.k}")
        require_max_len(request.exclude_item_ids, "exclude_item_ids", MAX_EXCLUDE)
        require_max_len(request.context, "context", MAX_CONTEXT)
        check_filter(request.filter, None)  # attribute names: retrieval knows the catalogue
        self._start_watch()
        async with self.admission.admit():
            return await self._recommend(request, context, trip)

    async def _recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.aio.ServicerContext[Any, Any], trip: Trip
    ) -> gateway_pb2.RecommendResponse:

        config = self.experiment_config  # one config for the whole request, whatever a reload does meanwhile
        forced = request.context.get(experiments.FORCE_KEY) or _metadata(context, experiments.FORCE_KEY)
        assignments = experiments.assign(
            config, request.user_id, experiments.parse_forced(forced) if forced else None
        )
        settings = experiments.settings_for(assignments, self.config.candidates)
        span = trace.get_current_span()
        for a in assignments:
            span.set_attribute(f"recsys.experiment.{a.experiment}", a.arm.name)
        span.set_attribute("recsys.budget_ms", self.config.total_budget_ms)
        teams: dict[str, str] = {}
        try:
            if settings.interleave:
                a_side, b_side = await asyncio.gather(
                    self._serve_version(request, settings, settings.version, trip),
                    self._serve_version(request, settings, settings.interleave, trip, "b."),
                    return_exceptions=True,
                )
                if isinstance(a_side, BaseException) and isinstance(b_side, BaseException):
                    raise a_side
                if isinstance(a_side, BaseException) or isinstance(b_side, BaseException):
                    failed = a_side if isinstance(a_side, BaseException) else b_side
                    trip.degraded.append(f"interleaving: one side failed ({failed}); one ranker served")
                    served = b_side if isinstance(a_side, BaseException) else a_side
                    assert isinstance(served, Served)
                else:
                    items, teams = team_draft(a_side.items, b_side.items, request.k, self._rng)
                    served = Served(
                        items,
                        f"{a_side.version}+{b_side.version}",
                        a_side.candidates,
                        {**b_side.explanations, **a_side.explanations},
                    )
            else:
                served = await self._serve_version(request, settings, settings.version, trip)
        except StageFailed as e:
            if e.code == "INVALID_ARGUMENT":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.details)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no candidates: {e}")
            raise  # unreachable: abort raises

        trip.timings["total"] = trip.budget.elapsed_ms()
        degraded = trip.degraded
        span.set_attribute("recsys.degraded", bool(degraded))
        span.set_attribute("recsys.over_budget", trip.budget.remaining_ms() < 0)
        span.set_attribute("recsys.candidates", served.candidates)
        for reason in degraded:
            DEGRADED.add(1, {"stage": reason.split(":", 1)[0]})
        if degraded:
            log.warning("degraded response", extra={"user_id": request.user_id, "reasons": degraded})
        trace_id = current_trace_id()
        if self.config.log_exposures and assignments:
            self._log_exposures(request.user_id, assignments, teams, bool(degraded))
        return gateway_pb2.RecommendResponse(
            items=served.items,
            assignments=[
                gateway_pb2.ExperimentAssignment(experiment=a.experiment, arm=a.arm.name) for a in assignments
            ],
            degraded=bool(degraded),
            degraded_reasons=degraded,
            timings=[gateway_pb2.StageTiming(stage=s, ms=ms) for s, ms in trip.timings.items()]
            if request.debug
            else [],
            trace_id=trace_id,
            artifact_version=served.version,
            explanations=explanations(served, degraded) if request.explain else [],
        )

    def _log_exposures(
        self,
        user_id: str,
        assignments: list[experiments.Assignment],
        teams: dict[str, str],
        degraded: bool,
    ) -> None:
        """One EXPOSURE event per (experiment, arm) of this response; QA-forced arms are not logged."""
        now = int(time.time() * 1000)
        request_id = uuid.uuid4().hex
        events = []
        for a in assignments:
            if a.forced:
                continue
            ctx = {"request_id": request_id}
            if degraded:
                ctx["degraded"] = "1"
            if teams and a.arm.overrides.interleave:
                ctx["team_a"] = ",".join(i for i, t in teams.items() if t == "a")
                ctx["team_b"] = ",".join(i for i, t in teams.items() if t == "b")
            events.append(
                common_pb2.Event(
                    event_id=new_event_id(),
                    user_id=user_id,
                    type=common_pb2.EVENT_TYPE_EXPOSURE,
                    timestamp_ms=now,
                    experiment=a.experiment,
                    arm=a.arm.name,
                    context=ctx,
                )
            )
        if events:
            self.exposures.submit(events)

    @handler("gateway", "feedback")
    async def Feedback(
        self, request: gateway_pb2.FeedbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.FeedbackResponse:
        # Checked here with the features service's own rules, so a batch it would refuse costs no round
        # trip; it checks again and writes all or nothing, and its status is ours.
        for i, e in enumerate(request.events):
            require(
                e.type != common_pb2.EVENT_TYPE_EXPOSURE,
                f"events[{i}].type",
                "EXPOSURE events are written by the gateway itself",
            )
        events_from_request(request.events, 0)
        events = []
        for e in request.events:
            # An id before the first attempt: a retry below (another replica) is then written once.
            event = common_pb2.Event()
            event.CopyFrom(e)
            event.event_id = e.event_id or new_event_id()
            events.append(event)
        deadline = time.monotonic() + self.config.feedback_budget_ms / 1000
        while True:
            try:
                written = await self.backends.features.WriteEvents(
                    features_pb2.WriteEventsRequest(events=events),
                    timeout=max(0.001, deadline - time.monotonic()),
                )
                return gateway_pb2.FeedbackResponse(accepted=written.written)
            except grpc.aio.AioRpcError as e:
                # UNAVAILABLE: that replica is gone or restarting; round_robin picks another.
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + FEEDBACK_RETRY_S >= deadline:
                    await context.abort(e.code(), e.details() or e.code().name)
                    raise  # unreachable: abort raises
            await asyncio.sleep(FEEDBACK_RETRY_S)

    @handler("gateway", "similar_items")
    async def SimilarItems(
        self, request: gateway_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.SimilarItemsResponse:
        require_id(request.item_id, "item_id")
        require(1 <= request.k <= MAX_K, "k", f"must be in 1..{MAX_K}, got {request.k}")
        self._start_watch()
        try:
            reply = await self.backends.retrieval.SimilarItems(
                retrieval_pb2.RetrievalSimilarRequest(
                    item_id=request.item_id,
                    k=request.k,
                    filter=request.filter,
                    catalogue_version=self.catalogue.state.version,
                ),
                timeout=self.config.total_budget_ms / 1000,
            )
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or e.code().name)
            raise  # unreachable: abort raises
        return gateway_pb2.SimilarItemsResponse(items=reply.items, artifact_version=reply.artifact_version)

    async def _catalogue_write(self, call: Awaitable[W], context: grpc.aio.ServicerContext[Any, Any]) -> W:
        """A catalogue write forwarded to the features service, whose status is ours; this gateway's
        mirror then catches up, so its own fallbacks see the change at once."""
        try:
            reply = await call
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or e.code().name)
            raise  # unreachable: abort raises
        try:
            await self.catalogue.catch_up(reply.catalogue_version)
        except grpc.aio.AioRpcError as e:
            log.warning("catalogue mirror behind after a write", extra={"code": e.code().name})
        return reply

    @handler("gateway", "upsert_items")
    async def UpsertItems(
        self, request: common_pb2.UpsertItemsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.UpsertItemsResponse:
        items_from_request(request.items)  # the features service's rules: refused here without a trip
        self._start_watch()
        timeout = self.config.feedback_budget_ms / 1000
        return await self._catalogue_write(
            self.backends.features.UpsertItems(request, timeout=timeout), context
        )

    async def _set_hidden(
        self, request: common_pb2.HideItemsRequest, hide: bool, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.HideItemsResponse:
        ids = ids_from_request(request.item_ids)
        self._start_watch()
        timeout = self.config.feedback_budget_ms / 1000
        return await self._catalogue_write(
            self.backends.features.SetItemsHidden(
                features_pb2.SetItemsHiddenRequest(item_ids=ids, hidden=hide), timeout=timeout
            ),
            context,
        )

    @handler("gateway", "hide_items")
    async def HideItems(
        self, request: common_pb2.HideItemsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.HideItemsResponse:
        return await self._set_hidden(request, True, context)

    @handler("gateway", "unhide_items")
    async def UnhideItems(
        self, request: common_pb2.HideItemsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.HideItemsResponse:
        return await self._set_hidden(request, False, context)


class Gateway:
    name = "gateway"
    service_name = "recsys.v1.Gateway"
    # The gateway holds no artifacts: it is SERVING as soon as it listens, and degrades per stage.
    needs_artifacts = False

    def __init__(self, config: Config) -> None:
        self.servicer = GatewayServicer(config)
        self.auth: auth.AuthInterceptor | None = None
        self._keys_watch: PeriodicTask | None = None
        self._tls_watch: PeriodicTask | None = None
        if self.servicer.backends.watched:
            self._tls_watch = PeriodicTask(
                "backend-tls-reload", self.servicer.backends.poll, config.backend_tls_reload_s
            )
        if config.api_keys_file is not None:
            authorizer = auth.Authorizer(config.api_keys_file, config.auth_health, config.auth_reflection)
            self.auth = auth.AuthInterceptor(authorizer)
            self._keys_watch = PeriodicTask("api-keys-reload", authorizer.poll, config.api_keys_reload_s)
            loaded = auth.names(authorizer.keys.value)
            log.info(
                "authentication on",
                extra={
                    "path": str(config.api_keys_file),
                    "keys": loaded,
                    "health_exempt": not config.auth_health,
                    "reflection_exempt": not config.auth_reflection,
                },
            )
            if not loaded:
                log.warning("the API keys file lists no keys: every call is refused until one is added")
        else:
            log.log(
                logging.INFO if auth.is_loopback(config.host) else logging.WARNING,
                "authentication off: every caller may call every RPC",
                extra={"host": config.host},
            )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
        return [] if self.auth is None else [self.auth]

    def add_to_server(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(self.servicer, server)

    async def load(self, version: ArtifactVersion) -> None:
        raise NotImplementedError("the gateway loads no artifacts")

    async def close(self) -> None:
        for watch in (self._keys_watch, self._tls_watch):
            if watch is not None:
                await watch.stop()
        await self.servicer.close()


def create(config: Config) -> Gateway:
    return Gateway(config)
