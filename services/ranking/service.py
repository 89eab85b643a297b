"""RankingService: the version's ranker over the retrieval candidates -> top k.

The ranker's input is built by services.common.ranker_features.assemble, the function the trainer used,
from the request (the user's feature row, the candidates and their source columns) and the version's
item feature rows, which this service holds: the rows of 500 candidates cost no round trip. The models
(services.common.ranker) score with compiled trees once they are proven equal to LightGBM's. Items the
user has seen are never returned; duplicate candidates count once; `mmr_lambda` diversifies the top
over the version's content vectors. A sample of the scored rows is counted for drift detection
(services.ranking.monitor; `GetFeatureStats` returns the counts beside the version's reference).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from opentelemetry.metrics import CallbackOptions, Observation

from recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
from services.common import candidates
from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.catalogue import FRESH
from services.common.config import non_negative, option, port_number, positive
from services.common.diversity import POOL_FACTOR, mmr
from services.common.drift import Histogram
from services.common.fusion import CandidateColumns
from services.common.meters import meter
from services.common.ranker import ONNX_FILE, Ensemble, model_file
from services.common.ranker import Model as RankerModel
from services.common.ranker_features import ITEM_FEATURES, USER_FEATURES, assemble, ranker_features
from services.common.rpc import handler, require, require_max_len
from services.common.server import ServerConfig
from services.common.versions import ServedVersions
from services.ranking.monitor import FeatureMonitor, Window
from services.ranking.onnx_scorer import FAMILIES as ONNX_FAMILIES
from services.ranking.onnx_scorer import OnnxScorer
from services.ranking.trees import TreeScorer, default_cache_dir

log = logging.getLogger(__name__)

MAX_CANDIDATES = 10_000
MAX_K = 1_000


def share(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


@dataclass(frozen=True)
class Config(ServerConfig):
    port: int = option(50054, "port to listen on", port_number)
    compiled_trees: bool = option(
        True, "score with lleaves-compiled trees once compiled (LightGBM until then)"
    )
    compile_cache: Path | None = option(
        None, "where compiled rankers are cached (default ~/.cache/recsys/lleaves)"
    )
    drift_sample_rows: int = option(
        8, "scored rows per request counted for drift detection (0: none)", non_negative
    )
    drift_window_seconds: float = option(600.0, "length of a drift-counting window", positive)
    exploration_share: float = option(
        0.1,
        "share of the k slots kept for candidates the version does not know (upserted items, origin "
        "`fresh`), at the end of the list, when retrieval sends any (0: none; they still fill slots the "
        "ranked candidates leave empty)",
        share,
    )
    onnx_threads: int = option(1, "onnxruntime intra-op threads of a deep ranker (per request)", positive)


@dataclass(frozen=True)
class Model:
    """Everything one artifact version contributes; replaced as a whole on reload."""

    version: str
    sources: list[str]
    feature_names: list[str]
    family: str  # the ranker family (manifest ranker.family): lightgbm, dcnv2, deepfm
    scorers: list[TreeScorer]  # the trees to compile (none for a deep family)
    ranker: Ensemble
    item_row: dict[str, int]
    item_features: npt.NDArray[np.float32]  # (items, len(ITEM_FEATURES)), rows as item_ids.json
    diversity: npt.NDArray[np.float32]  # (items, d) the vectors MMR compares items by
    monitor: FeatureMonitor

    @classmethod
    def load(cls, version: ArtifactVersion, config: Config) -> Model:
        import lightgbm as lgb

        what = f"artifact {version.version}"
        manifest = version.manifest
        features = manifest.get("features") or {}
        sources = list((manifest.get("pipeline") or {}).get("sources") or [])
        names = ranker_features(sources)
        for key, expected in (
            ("user", list(USER_FEATURES)),
            ("item", list(ITEM_FEATURES)),
            ("ranker", names),
        ):
            if list(features.get(key) or []) != expected:
                raise ArtifactError(
                    f"{what}: manifest features.{key} differ from what this ranking service assembles "
                    "(train and serve versions disagree)"
                )
        ranker_info = manifest.get("ranker") or {}
        family = str(ranker_info.get("family") or "lightgbm")
        count = int(ranker_info.get("models") or 0)
        if count < 1:
            raise ArtifactError(f"{what}: manifest ranker.models names no model")
        scorers: list[TreeScorer] = []
        models: list[RankerModel] = []
        if family in ONNX_FAMILIES:
            schema = list((ranker_info.get("inputs") or {}).get("features") or [])
            if schema != names:
                raise ArtifactError(
                    f"{what}: manifest ranker.inputs.features ({len(schema)}) differ from the ranker features "
                    f"({len(names)})"
                )
            models.append(OnnxScorer(version.file(ONNX_FILE), len(names), config.onnx_threads, what))
        elif family != "lightgbm":
            raise ArtifactError(f"{what}: manifest ranker.family {family!r} is not one this service scores")
        for i in range(count if family == "lightgbm" else 0):
            path = version.file(model_file(i))
            try:
                booster = lgb.Booster(model_file=str(path))
            except lgb.basic.LightGBMError as e:
                raise ArtifactError(f"{what}: {path.name} is not a LightGBM model ({e})") from e
            if booster.num_feature() != len(names):
                raise ArtifactError(
                    f"{what}: {path.name} takes {booster.num_feature()} features, the manifest lists {len(names)}"
                )
            scorers.append(TreeScorer(booster, path))
            models.append(scorers[-1])
        item_ids = json.loads(version.file("item_ids.json").read_text())
        item_features = np.load(version.file("item_features.npy"), allow_pickle=False)
        if not isinstance(item_ids, list) or item_features.shape != (len(item_ids), len(ITEM_FEATURES)):
            raise ArtifactError(
                f"{what}: item_features.npy has shape {item_features.shape}, expected ({len(item_ids)}, {len(ITEM_FEATURES)})"
            )
        diversity_file = str((manifest.get("diversity") or {}).get("file") or "")
        diversity = np.load(version.file(diversity_file), allow_pickle=False) if diversity_file else None
        if diversity is None or diversity.ndim != 2 or diversity.shape[0] != len(item_ids):
            raise ArtifactError(
                f"{what}: no diversity vectors of {len(item_ids)} items (manifest diversity.file)"
            )
        raw_reference = (features.get("reference") or {}).get("ranker") or {}
        try:
            reference = {name: Histogram.from_json(h) for name, h in raw_reference.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{what}: manifest features.reference.ranker is malformed ({e})") from e
        monitor = FeatureMonitor(names, reference, config.drift_sample_rows, config.drift_window_seconds)
        ranker = Ensemble(models)
        # One scoring call proves the models and the assembly agree before the version is served.
        probe = CandidateColumns(np.zeros(2, np.int64), np.zeros(2, np.float32), ["", ""], {})
        ranker.score(
            assemble(sources, np.empty(0, np.float32), np.zeros((2, len(ITEM_FEATURES))), probe),
            np.array([0, -1], dtype=np.int64),
        )
        return cls(
            version.version,
            sources,
            names,
            family,
            scorers,
            ranker,
            {str(item): i for i, item in enumerate(item_ids)},
            np.ascontiguousarray(item_features, dtype=np.float32),
            np.ascontiguousarray(diversity, dtype=np.float32),
            monitor,
        )

    def rows(self, item_ids: list[str]) -> npt.NDArray[np.int64]:
        """Row of each id in this version's item matrices; -1 for unknown ids."""
        return np.fromiter(map(self.item_row.get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))

    @staticmethod
    def take(matrix: npt.NDArray[np.float32], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """matrix[rows]; NaN rows for unknown items (-1)."""
        out = matrix[np.maximum(rows, 0)]
        out[rows < 0] = np.nan
        return out

    def features(
        self, request: ranking_pb2.RankRequest, rows: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """The ranker's input for the request's candidates (`rows`: their rows, `self.rows`)."""
        return assemble(
            self.sources,
            np.asarray(request.user.values, dtype=np.float32),
            self.take(self.item_features, rows),
            candidates.from_proto(request.candidates, rows),
        )


def _psi_observations(_options: CallbackOptions) -> Iterable[Observation]:
    for service in list(_SERVICES):
        yield from service.psi_observations()


def _count_observations(_options: CallbackOptions) -> Iterable[Observation]:
    for service in list(_SERVICES):
        yield from service.count_observations()


#: The live services of this process (one, but tests make many): one gauge reads them all, because an
#: instrument's name registers once per process.
_SERVICES: weakref.WeakSet[RankingService] = weakref.WeakSet()
meter("ranking").create_observable_gauge(
    "recsys.ranking.feature_psi",
    [_psi_observations],
    description="PSI of each scored feature against the version's training reference",
)
meter("ranking").create_observable_counter(
    "recsys.ranking.feature_rows",
    [_count_observations],
    unit="{row}",
    description="sampled scored rows per feature and reference bin (bin: 0.., or missing)",
)


class RankingService(ranking_pb2_grpc.RankingServiceServicer):
    """The gRPC servicer and the server Component (services.common.server.Component) in one."""

    name = "ranking"
    service_name = "recsys.v1.RankingService"
    needs_artifacts = True

    def __init__(self, config: Config) -> None:
        self.config = config
        #: CURRENT plus the PINNED versions (experiment arms pick one with `artifact_version`).
        self.versions: ServedVersions[Model] = ServedVersions("ranking")
        self._compiling: set[asyncio.Task[None]] = set()
        _SERVICES.add(self)

    def _monitored(self) -> list[Model]:
        models = [self.versions.current, *self.versions.pinned.values()]
        return [m for m in models if m is not None and m.monitor.enabled]

    def psi_observations(self) -> Iterable[Observation]:
        for model in self._monitored():
            for feature, value in model.monitor.psi().items():
                yield Observation(value, {"feature": feature, "version": model.version})

    def count_observations(self) -> Iterable[Observation]:
        for model in self._monitored():
            for feature, h in model.monitor.cumulative().items():
                labels = {"feature": feature, "version": model.version}
                for i, count in enumerate(h.counts):
                    yield Observation(count, {**labels, "bin": str(i)})
                yield Observation(h.missing, {**labels, "bin": "missing"})

    @property
    def _model(self) -> Model | None:
        return self.versions.current

    @property
    def version(self) -> str | None:
        return self._model.version if self._model is not None else None

    # --- Component ----------------------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ranking_pb2_grpc.add_RankingServiceServicer_to_server(self, server)

    async def load(self, version: ArtifactVersion) -> None:
        """Build the new model completely off the event loop, then swap it in; raise to refuse it."""
        model = await asyncio.to_thread(Model.load, version, self.config)
        previous = self.version
        self.versions.current = model
        log.info(
            "ranker loaded",
            extra={"version": version.version, "previous": previous, "models": len(model.scorers)},
        )
        self._compile_later(model)

    def _compile_later(self, model: Model) -> None:
        """Compile the trees in the background; until then (or if it fails) LightGBM scores."""
        if not self.config.compiled_trees or not model.scorers:  # a deep family has no trees
            return

        async def compile_trees() -> None:
            cache = self.config.compile_cache or default_cache_dir()
            try:
                compiled = [await asyncio.to_thread(s.compile, cache) for s in model.scorers]
                if all(compiled):
                    log.info("ranker compiled", extra={"version": model.version, "models": len(compiled)})
            except Exception as e:  # LightGBM keeps scoring; the service stays up
                log.error("ranker compilation failed", extra={"version": model.version, "reason": str(e)})

        task = asyncio.get_running_loop().create_task(compile_trees())
        self._compiling.add(task)
        task.add_done_callback(self._compiling.discard)

    async def load_pinned(self, version: ArtifactVersion) -> None:
        """Serve `version` beside CURRENT (listed in PINNED); raise to refuse it."""
        model = self.versions.reuse(version.version)
        if model is None:
            model = await asyncio.to_thread(Model.load, version, self.config)
            self._compile_later(model)
        self.versions.pinned = {**self.versions.pinned, version.version: model}

    def unpin(self, name: str) -> None:
        self.versions.pinned = {k: v for k, v in self.versions.pinned.items() if k != name}

    async def close(self) -> None:
        for task in list(self._compiling):
            task.cancel()
        self.versions.current = None
        self.versions.pinned = {}

    # --- RPC ----------------------------------------------------------------------------------------

    @handler("ranking", "rank")
    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ranking_pb2.RankResponse:
        model = self.versions.get(request.artifact_version)  # one reference for the whole request
        require(1 <= request.k <= MAX_K, "k", f"must be in 1..{MAX_K}, got {request.k}")
        cands = request.candidates
        require_max_len(cands.item_ids, "candidates.item_ids", MAX_CANDIDATES)
        candidates.validate(cands)
        require(
            0 <= request.mmr_lambda < 1,
            "mmr_lambda",
            f"must be in [0, 1) (0 = off), got {request.mmr_lambda}",
        )
        values = len(request.user.values)
        require(
            values in (0, len(USER_FEATURES)),
            "user.values",
            f"must be empty or hold {len(USER_FEATURES)} values, got {values}",
        )
        n = len(cands.item_ids)
        if n == 0:
            fresh = explore([], request.fresh, set(request.user.seen_item_ids), request.k, 0.0)
            return ranking_pb2.RankResponse(items=fresh, artifact_version=model.version)
        ids = list(cands.item_ids)
        rows = model.rows(ids)
        matrix = model.features(request, rows)
        seen = set(request.user.seen_item_ids)
        # The ranker learns on users with a history (its label groups); for a user with none it has
        # nothing to go on, and measured it orders popular items worse than popularity does
        # (bench/replay.py's newcomers), so they keep retrieval's order: the fused score.
        cold = not seen
        if cold:
            scores = np.asarray(cands.scores, dtype=np.float64)
        elif n > 2000:
            scores = await asyncio.to_thread(model.ranker.score, matrix, rows)
        else:
            scores = model.ranker.score(matrix, rows)
        if len(set(ids)) == n:  # retrieval sends distinct items; a caller may not
            if seen.isdisjoint(ids):  # retrieval excludes the history already
                order = np.arange(n)
            else:
                order = np.flatnonzero(np.fromiter((item not in seen for item in ids), dtype=bool, count=n))
        else:
            first: dict[str, int] = {}
            for position, item in enumerate(ids):
                first.setdefault(item, position)  # duplicates count once
            order = np.fromiter((p for item, p in first.items() if item not in seen), dtype=np.int64)
        order = order[np.argsort(-scores[order], kind="stable")]
        final = scores
        if 0 < request.mmr_lambda < 1:
            pool = order[: request.k * POOL_FACTOR]
            picked, marginal = mmr(
                scores[pool], model.take(model.diversity, rows[pool]), request.k, request.mmr_lambda
            )
            order = pool[picked]
            final = np.empty_like(scores)
            final[order] = marginal
        top = order[: request.k]
        items = candidates.scored_items(cands, top.tolist(), final.tolist())
        if request.fresh:
            items = explore(items, request.fresh, seen, request.k, self.config.exploration_share)
            top = top[: len(items) - sum(i.source == FRESH for i in items)]
        response = ranking_pb2.RankResponse(items=items, artifact_version=model.version)
        if request.debug:
            response.features = matrix[top].astype("<f4").tobytes()
            response.feature_names.extend(model.feature_names)
        if request.explain and (cold or model.family != "lightgbm"):
            # per-feature contributions come from the trees (SHAP): a deep family says so per item
            why = (
                "a user with no history is served in retrieval order, not by the ranker"
                if cold
                else f"the {model.family} ranker gives no per-feature contributions (tree rankers do)"
            )
            response.explanations.extend(
                common_pb2.Explanation(item_id=ids[i], ranker_score=float(scores[i]), unavailable=why)
                for i in top.tolist()
            )
        elif request.explain:
            response.explanations.extend(
                await asyncio.to_thread(explain, model, request.candidates, matrix, scores, top)
            )
        if model.monitor.enabled:
            asyncio.get_running_loop().call_soon(model.monitor.observe, matrix)
        return response

    @handler("ranking", "get_feature_stats")
    async def GetFeatureStats(
        self, request: ranking_pb2.GetFeatureStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ranking_pb2.GetFeatureStatsResponse:
        model = self.versions.get(request.artifact_version)
        monitor = model.monitor
        response = ranking_pb2.GetFeatureStatsResponse(
            artifact_version=model.version,
            reference=histograms_to_proto(monitor.reference),
            current=window_to_proto(monitor.current()),
        )
        if monitor.previous is not None:
            response.previous.CopyFrom(window_to_proto(monitor.previous))
        return response


def explain(
    model: Model,
    cands: common_pb2.Candidates,
    matrix: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float64],
    top: npt.NDArray[np.int64],
) -> list[common_pb2.Explanation]:
    """The Explanation of each candidate of `top` (its ranker score: `scores`)."""
    base, parts = model.ranker.explain(matrix, top)
    ranks = {c.source: np.asarray(c.ranks, dtype=np.float32) for c in cands.columns}
    out = []
    for j, i in enumerate(top.tolist()):
        order = np.argsort(-np.abs(parts[j]), kind="stable")
        out.append(
            common_pb2.Explanation(
                item_id=cands.item_ids[i],
                ranker_score=float(scores[i]),
                base=float(base[j]),
                contributions=[
                    common_pb2.FeatureContribution(
                        feature=model.feature_names[f],
                        value=float(matrix[i, f]),
                        contribution=float(parts[j, f]),
                    )
                    for f in order.tolist()
                ],
                sources=[name for name, r in ranks.items() if np.isfinite(r[i])],
            )
        )
    return out


def histograms_to_proto(histograms: dict[str, Histogram]) -> list[ranking_pb2.FeatureHistogram]:
    return [
        ranking_pb2.FeatureHistogram(name=name, edges=h.edges, counts=h.counts, missing=h.missing)
        for name, h in histograms.items()
    ]


def window_to_proto(window: Window) -> ranking_pb2.FeatureWindow:
    return ranking_pb2.FeatureWindow(
        start_ms=int(window.start * 1000),
        end_ms=int(window.end * 1000),
        rows=window.rows,
        features=histograms_to_proto(window.histograms),
    )


def explore(
    ranked: list[common_pb2.ScoredItem],
    fresh: Sequence[common_pb2.ScoredItem],
    seen: set[str],
    k: int,
    share_of_k: float,
) -> list[common_pb2.ScoredItem]:
    """`ranked` cut to k with slots at the end for the `fresh` items (in retrieval's order, their content
    score): round(share * k) of them (at least one; none with share 0), and any the ranked items leave
    empty. The ranker cannot score what it was not trained on, so they are shown on purpose until a
    retrain learns them. Their scores continue below the last ranked one (non-increasing)."""
    explored = max(1, round(share_of_k * k)) if share_of_k > 0 else 0
    slots = min(max(explored, k - len(ranked)), k)
    chosen = {i.item_id for i in ranked}
    picked = [i for i in fresh if i.item_id not in seen and i.item_id not in chosen][:slots]
    kept = ranked[: k - len(picked)]
    below = kept[-1].score if kept else 0.0
    return kept + [
        common_pb2.ScoredItem(item_id=i.item_id, score=below - 1.0 - n, source=FRESH)
        for n, i in enumerate(picked)
    ]


def create(config: Config) -> RankingService:
    return RankingService(config)
