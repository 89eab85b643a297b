"""The quality of what is served: each user's top k asked of a running gateway over gRPC, or of the same
services' handlers called in-process on the same artifacts (no processes, no network), scored against
held-out interactions. Used by the accuracy benchmarks, the parity test and the trainer's quality gate.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.v1 import features_pb2, ranking_pb2, retrieval_pb2
from services.client import Client
from services.common.artifacts import current_version_name, open_version
from services.features.store import Event
from services.trainer.metrics import mean_metrics


@dataclass
class Answers:
    """Each user's items, best first, and what went wrong on the way."""

    items: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    degraded: dict[str, list[str]] = field(default_factory=dict)
    versions: set[str] = field(default_factory=set)

    def metrics(self, relevant: Mapping[str, set[str]], k: int) -> dict[str, float]:
        return {key: round(v, 6) for key, v in mean_metrics(self.items, relevant, k).items()}


def from_gateway(address: str, users: Sequence[str], k: int, concurrency: int = 4) -> Answers:
    """Recommend(user, k) for every user through the gateway at `address`."""
    answers = Answers()
    clients = [Client(address, timeout_s=30.0) for _ in range(concurrency)]

    def ask(i: int) -> tuple[str, Any]:
        user = users[i]
        return user, clients[i % concurrency].recommend(user, k=k)

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            for user, response in pool.map(ask, range(len(users))):
                answers.items[user] = [item.item_id for item in response.items]
                answers.scores[user] = [item.score for item in response.items]
                if response.degraded:
                    answers.degraded[user] = list(response.degraded_reasons)
                answers.versions.add(response.artifact_version)
    finally:
        for client in clients:
            client.close()
    return answers


@dataclass
class Handlers:
    """The features, retrieval and ranking services' handlers in this process over one version of an
    artifact root, called as the gateway calls them (LightGBM trees: the served ones agree to 1e-6)."""

    features: Any
    retrieval: Any
    ranking: Any
    context: Any = None  # valid requests never touch the context

    async def user(self, user_id: str) -> Any:
        request = features_pb2.GetUserFeaturesRequest(user_id=user_id)
        return (await self.features.GetUserFeatures(request, self.context)).user

    async def retrieve(self, user: Any, k: int) -> Any:
        request = retrieval_pb2.RetrieveRequest(user_id=user.user_id, user=user, min_n=k)
        return await self.retrieval.Retrieve(request, self.context)

    async def rank(self, user: Any, found: Any, k: int) -> Any:
        request = ranking_pb2.RankRequest(user=user, candidates=found.candidates, k=k)
        return await self.ranking.Rank(request, self.context)


#: Events appended to the in-process store per call (the features service's own batch rules apply).
FEEDBACK_BATCH = 500


@asynccontextmanager
async def handlers(
    artifacts: Path, version: str | None = None, feedback: Sequence[Event] = ()
) -> AsyncIterator[Handlers]:
    """Handlers over `version` (default: CURRENT); `feedback` is appended to the features store first, as
    live events arriving after the version was trained (they reach each user's recent and seen items)."""
    from recsys.v1.features_pb2 import GetCatalogueRequest
    from services.features.catalogue import FileCatalogue
    from services.features.embedded import EmbeddedConfig, EmbeddedStore
    from services.features.service import FeatureServicer
    from services.ranking.service import Config as RankingConfig
    from services.ranking.service import RankingService
    from services.retrieval.service import Config as RetrievalConfig
    from services.retrieval.service import RetrievalService

    served = open_version(artifacts, version or current_version_name(artifacts))
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(EmbeddedConfig(event_log=Path(tmp) / "events.jsonl"))
        try:
            await store.materialize(served)
            for start in range(0, len(feedback), FEEDBACK_BATCH):
                await store.append_events(feedback[start : start + FEEDBACK_BATCH])
            features = FeatureServicer(store, FileCatalogue(Path(tmp) / "catalogue.jsonl"))
            context: Any = None  # valid requests never touch the context
            # the live catalogue from this process's features servicer, not from a features address
            retrieval = RetrievalService(
                RetrievalConfig(),
                lambda after: features.GetCatalogue(GetCatalogueRequest(after_version=after), context),
            )
            await retrieval.load(served)
            ranking = RankingService(RankingConfig(compiled_trees=False))
            await ranking.load(served)
            try:
                yield Handlers(features, retrieval, ranking)
            finally:
                await retrieval.close()
        finally:
            await store.close()


def in_process(
    artifacts: Path,
    users: Sequence[str],
    k: int,
    version: str | None = None,
    feedback: Sequence[Event] = (),
) -> Answers:
    """The gateway's path (features -> retrieval -> ranking) through the services' own handlers, in this
    process, on `version` of `artifacts` (default: CURRENT) after `feedback` (see `handlers`)."""

    async def run() -> Answers:
        answers = Answers()
        async with handlers(artifacts, version, feedback) as h:
            for user_id in users:
                user = await h.user(user_id)
                ranked = await h.rank(user, await h.retrieve(user, k), k)
                answers.items[user_id] = [i.item_id for i in ranked.items]
                answers.scores[user_id] = [i.score for i in ranked.items]
                answers.versions.add(ranked.artifact_version)
        return answers

    return asyncio.run(run())
