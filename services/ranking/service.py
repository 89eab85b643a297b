"""RankingService: LightGBM LambdaRank over the retrieval candidates -> top k.

The ranker's input is built by services.common.ranking_features.assemble, the same function the trainer
used, from the request (user features, candidates and their retrieval scores) plus the artifact
version's item feature rows and item embeddings, which this service holds in memory: the item rows of
500 candidates cost no round trip and no serialisation. Items the user has seen are never returned;
duplicate candidates count once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from services.common import candidates
from services.common import ranking_features as rf
from services.common.artifacts import ArtifactError, ArtifactVersion
from services.common.config import option, port_number
from services.common.rpc import handler, require, require_max_len
from services.common.server import ServerConfig
from services.common.versions import ServedVersions
from services.ranking.diversity import POOL_FACTOR, mmr
from services.ranking.trees import TreeScorer, default_cache_dir

log = logging.getLogger(__name__)

MAX_CANDIDATES = 10_000
MAX_K = 1_000


@dataclass(frozen=True)
class Config(ServerConfig):
    port: int = option(50054, "port to listen on", port_number)
    compiled_trees: bool = option(
        True, "score with lleaves-compiled trees once compiled (LightGBM until then)"
    )
    compile_cache: Path | None = option(
        None, "where compiled rankers are cached (default ~/.cache/recsys/lleaves)"
    )


@dataclass(frozen=True)
class Model:
    """Everything one artifact version contributes; replaced as a whole on reload."""

    version: str
    scorer: TreeScorer
    item_row: dict[str, int]
    item_vectors: npt.NDArray[np.float32]
    item_features: npt.NDArray[np.float32]  # (items, len(rf.ITEM_FEATURES)), rows as item_ids.json
    neighbours: rf.ItemNeighbours  # sequence neighbours, rows as item_ids.json

    @classmethod
    def load(cls, version: ArtifactVersion) -> Model:
        import lightgbm as lgb

        features = version.manifest.get("features") or {}
        for key, expected in (
            ("user", rf.USER_FEATURES),
            ("item", rf.ITEM_FEATURES),
            ("ranker", rf.RANKER_FEATURES),
        ):
            if list(features.get(key) or []) != list(expected):
                raise ArtifactError(
                    f"artifact {version.version}: manifest features.{key} differ from what this ranking "
                    "service assembles (train and serve versions disagree)"
                )
        try:
            booster = lgb.Booster(model_file=str(version.file("ranker.txt")))
        except lgb.basic.LightGBMError as e:
            raise ArtifactError(
                f"artifact {version.version}: ranker.txt is not a LightGBM model ({e})"
            ) from e
        if booster.num_feature() != len(rf.RANKER_FEATURES):
            raise ArtifactError(
                f"artifact {version.version}: ranker.txt takes {booster.num_feature()} features, "
                f"the manifest lists {len(rf.RANKER_FEATURES)}"
            )
        item_ids = json.loads(version.file("item_ids.json").read_text())
        vectors = np.load(version.file("item_embeddings.npy"), allow_pickle=False).astype(np.float32)
        if not isinstance(item_ids, list) or vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
            raise ArtifactError(
                f"artifact {version.version}: item_embeddings.npy has shape {vectors.shape}, "
                f"item_ids.json {len(item_ids)} ids"
            )
        item_features = np.load(version.file("item_features.npy"), allow_pickle=False)
        if item_features.shape != (len(item_ids), len(rf.ITEM_FEATURES)):
            raise ArtifactError(
                f"artifact {version.version}: item_features.npy has shape {item_features.shape}, "
                f"expected ({len(item_ids)}, {len(rf.ITEM_FEATURES)})"
            )
        try:
            neighbours = rf.ItemNeighbours.load(version.file(rf.NEIGHBOURS_FILE), len(item_ids))
        except (OSError, ValueError) as e:
            raise ArtifactError(f"artifact {version.version}: {e}") from e
        # One scoring call proves the model and the assembly agree before the version is served.
        probe = rf.assemble(
            np.empty(0, np.float32), np.zeros((2, len(rf.ITEM_FEATURES)), np.float32), np.zeros(2, np.float32)
        )
        scorer = TreeScorer(booster, version.file("ranker.txt"))
        scorer.predict(probe)
        return cls(
            version.version,
            scorer,
            {str(item): i for i, item in enumerate(item_ids)},
            vectors,
            np.ascontiguousarray(item_features, dtype=np.float32),
            neighbours,
        )

    def rows(self, item_ids: list[str]) -> npt.NDArray[np.int64]:
        """Row of each id in this version's item matrices; -1 for unknown ids."""
        return np.fromiter(map(self.item_row.get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))

    @staticmethod
    def _take(matrix: npt.NDArray[np.float32], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """matrix[rows]; NaN rows for unknown items (-1)."""
        out = matrix[np.maximum(rows, 0)]
        out[rows < 0] = np.nan
        return out

    def embeddings(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._take(self.item_vectors, rows)

    def score(self, request: ranking_pb2.RankRequest, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """The ranker's score of every candidate; `rows` are the candidates' rows (`self.rows`)."""
        recent_rows = self.rows(list(request.user.recent_item_ids[: rf.RECENT_ITEMS * 2]))
        recent_rows = recent_rows[recent_rows >= 0][: rf.RECENT_ITEMS]
        recent = rf.recent_profile(self.item_vectors[recent_rows], self.item_vectors.shape[1])
        matrix = rf.assemble(
            np.asarray(request.user.values, dtype=np.float32),
            self._take(self.item_features, rows),
            np.asarray(request.candidates.scores, dtype=np.float32),
            candidate_embeddings=self.embeddings(rows),
            recent=recent,
            recent_sequence=self.neighbours.scores(recent_rows, rows),
        )
        return self.scorer.predict(matrix)


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
        model = await asyncio.to_thread(Model.load, version)
        previous = self.version
        self.versions.current = model
        log.info("ranker loaded", extra={"version": version.version, "previous": previous})
        self._compile_later(model)

    def _compile_later(self, model: Model) -> None:
        """Compile the trees in the background; until then (or if it fails) LightGBM scores."""
        if not self.config.compiled_trees:
            return

        async def compile_trees() -> None:
            cache = self.config.compile_cache or default_cache_dir()
            try:
                if await asyncio.to_thread(model.scorer.compile, cache):
                    log.info("ranker compiled", extra={"version": model.version, "scorer": model.scorer.kind})
            except Exception as e:  # LightGBM keeps scoring; the service stays up
                log.error("ranker compilation failed", extra={"version": model.version, "reason": str(e)})

        task = asyncio.get_running_loop().create_task(compile_trees())
        self._compiling.add(task)
        task.add_done_callback(self._compiling.discard)

    async def load_pinned(self, version: ArtifactVersion) -> None:
        """Serve `version` beside CURRENT (listed in PINNED); raise to refuse it."""
        model = self.versions.reuse(version.version)
        if model is None:
            model = await asyncio.to_thread(Model.load, version)
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
            values in (0, len(rf.USER_FEATURES)),
            "user.values",
            f"must be empty or hold {len(rf.USER_FEATURES)} values, got {values}",
        )
        n = len(cands.item_ids)
        if n == 0:
            return ranking_pb2.RankResponse(artifact_version=model.version)
        ids = list(cands.item_ids)
        rows = model.rows(ids)
        scores = (
            await asyncio.to_thread(model.score, request, rows) if n > 2000 else model.score(request, rows)
        )
        first: dict[str, int] = {}
        for position, item in enumerate(ids):
            first.setdefault(item, position)  # duplicates count once
        seen = set(request.user.seen_item_ids)
        order = np.fromiter((p for item, p in first.items() if item not in seen), dtype=np.int64)
        order = order[np.argsort(-scores[order], kind="stable")]
        final = scores
        if 0 < request.mmr_lambda < 1:
            pool = order[: request.k * POOL_FACTOR]
            picked, marginal = mmr(scores[pool], model.embeddings(rows[pool]), request.k, request.mmr_lambda)
            order = pool[picked]
            final = np.empty_like(scores)
            final[order] = marginal
        return ranking_pb2.RankResponse(
            items=candidates.scored_items(cands, order[: request.k].tolist(), final.tolist()),
            artifact_version=model.version,
        )


def create(config: Config) -> RankingService:
    return RankingService(config)
