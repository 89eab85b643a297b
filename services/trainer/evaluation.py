"""Metrics of a fitted pipeline on held-out interactions: the two-stage pipeline, retrieval alone (the
fused order), each source alone, the candidates' recall, beyond-accuracy and MMR diversity.

Scored users: those with history in the fitted log and held-out items; every held-out interaction is
relevant, minus the items the user already has in the fitted log (they are never recommended).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.diversity import POOL_FACTOR, mmr
from services.common.fusion import CandidateColumns
from services.common.sources.base import exclusion
from services.trainer.data import Log
from services.trainer.metrics import coverage, intra_list_diversity, mean_metrics, popularity_bias
from services.trainer.pipeline import Fitted, Progress, Stage

K = 10
KS = (1, 3, 5, 10, 20, 50)
MMR_LAMBDAS = (1.0, 0.9, 0.8, 0.7, 0.5)


@dataclass
class Rankings:
    """Per scored user, item ids best first: the pipeline's, retrieval's and each source's."""

    relevant: dict[str, set[str]]
    lists: dict[str, dict[str, list[str]]]
    candidates: dict[str, list[str]]
    depth: dict[str, dict[str, list[str]]]  # each source's own list, `fusion.depth` long
    scores: dict[str, npt.NDArray[np.float64]]  # the ranker's scores of the pipeline's lists


def relevant_sets(stage: Stage, test: Log) -> dict[str, set[str]]:
    histories = stage.histories
    out: dict[str, set[str]] = {}
    for user, item in zip(test.users.tolist(), test.items.tolist(), strict=True):
        if user in histories:
            out.setdefault(user, set()).add(item)
    for user, items in out.items():
        items -= set(stage.universe.ids(histories[user].items))
    return {u: items for u, items in out.items() if items}


def rankings(fitted: Fitted, test: Log, progress: Progress, k: int = max(KS)) -> Rankings:
    relevant = relevant_sets(fitted.stage, test)
    users = sorted(relevant)
    ranked = fitted.rank(users, progress)
    universe, stage = fitted.universe, fitted.stage
    lists: dict[str, dict[str, list[str]]] = {"pipeline": {}, "retrieval": {}}
    lists.update({s: {} for s in fitted.config.sources})
    depth: dict[str, dict[str, list[str]]] = {s: {} for s in fitted.config.sources}
    candidates: dict[str, list[str]] = {}
    pipeline_scores: dict[str, npt.NDArray[np.float64]] = {}
    for user in users:
        cand, scores = ranked[user]
        order = np.argsort(-scores, kind="stable")[:k]
        lists["pipeline"][user] = universe.ids(cand.rows[order])
        pipeline_scores[user] = scores[order]
        lists["retrieval"][user] = universe.ids(cand.rows[:k])
        candidates[user] = universe.ids(cand.rows)
        history = stage.histories[user]
        excluded = exclusion(history.as_set)
        for s, source in stage.sources.items():
            rows, _ = source.scores(history).top(fitted.config.fusion.depth, excluded)
            depth[s][user] = universe.ids(rows)
            lists[s][user] = depth[s][user][:k]
    return Rankings(relevant, lists, candidates, depth, pipeline_scores)


F32 = npt.NDArray[np.float32]


@dataclass
class HeldOut:
    """The scored users of a holdout under one fitted stage, with their candidates and the ranker's
    input rows of them (stacked in user order): what every ranker fitted on that stage
    (services.trainer.pipeline.fit_rankers) is scored on, computed once."""

    users: list[str]
    relevant: dict[str, set[str]]
    candidates: list[CandidateColumns]
    matrix: F32

    def sample(self, count: int) -> HeldOut:
        """At most `count` of these users, evenly spread over the sorted ones (deterministic), with
        their own candidates and rows: a cheaper set to repeat many scorings on."""
        step = max(1, -(-len(self.users) // max(1, count)))
        keep = list(range(0, len(self.users), step))[:count]
        bounds = np.cumsum([0, *(len(c) for c in self.candidates)])
        pieces = [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in keep]
        rows = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
        users = [self.users[i] for i in keep]
        return HeldOut(
            users,
            {u: self.relevant[u] for u in users},
            [self.candidates[i] for i in keep],
            self.matrix[rows],
        )


def held_out(fitted: Fitted, test: Log, progress: Progress | None = None) -> HeldOut:
    relevant = relevant_sets(fitted.stage, test)
    users = sorted(relevant)
    cands, matrix = fitted.candidates_and_features(users, progress or Progress(False))
    return HeldOut(users, relevant, cands, matrix)


def ranked_lists(
    fitted: Fitted, held: HeldOut, k: int = K, matrix: F32 | None = None
) -> dict[str, list[str]]:
    """Each held-out user's top k by `fitted`'s ranker (the pipeline's lists of `rankings`); `matrix`:
    the input rows changed (same shape), e.g. a column shuffled."""
    scores = fitted.score(held.candidates, held.matrix if matrix is None else matrix)
    out: dict[str, list[str]] = {}
    for user, cand, s in zip(held.users, held.candidates, scores, strict=True):
        out[user] = fitted.universe.ids(cand.rows[np.argsort(-s, kind="stable")[:k]])
    return out


def permutation_importance(
    fitted: Fitted,
    held: HeldOut,
    groups: Mapping[str, Sequence[str]],
    metric: str = f"ndcg@{K}",
    seed: int = 0,
) -> dict[str, float]:
    """Per group of ranker columns (services.common.ranker_features.feature_groups): how much the mean
    `metric` of the pipeline's lists drops when the group's columns are shuffled together across all
    the held-out candidate rows (each row keeping its other columns). Model-agnostic, so the ranker
    families compare on it; 0 for columns the ranker ignores, below 0 when shuffling happens to help.
    A deep ranker's item embedding is not a column: it is never shuffled."""
    _, _, at = metric.partition("@")
    k = int(at) if at else K
    names = fitted.config.feature_names
    base = mean_metrics(ranked_lists(fitted, held, k), held.relevant, k)[metric]
    shuffled = held.matrix[np.random.default_rng(seed).permutation(held.matrix.shape[0])]
    out: dict[str, float] = {}
    for group, columns in groups.items():
        index = [names.index(c) for c in columns]
        matrix = held.matrix.copy()
        matrix[:, index] = shuffled[:, index]
        after = mean_metrics(ranked_lists(fitted, held, k, matrix), held.relevant, k)[metric]
        out[group] = round(float(base - after), 6)
    return out


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(float(v), 6) for key, v in values.items()}


def accuracy(r: Rankings, k: int = K) -> dict[str, dict[str, float]]:
    return {name: _rounded(mean_metrics(lists, r.relevant, k)) for name, lists in r.lists.items()}


def funnel(r: Rankings, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Recall@k of each source's own list and of the candidates, at the k each is long enough for."""
    out: dict[str, dict[str, float]] = {}
    for name, lists in r.depth.items():
        longest = max((len(v) for v in lists.values()), default=0)
        out[name] = {
            str(k): round(mean_metrics(lists, r.relevant, k)[f"recall@{k}"], 6) for k in ks if k <= longest
        }
    n = max((len(v) for v in r.candidates.values()), default=0)
    out["candidates"] = {
        str(k): round(mean_metrics(r.candidates, r.relevant, k)[f"recall@{k}"], 6)
        for k in (*ks, n)
        if 0 < k <= n
    }
    return out


def beyond(
    lists: dict[str, list[str]],
    item_ids: Sequence[str],
    counts: dict[str, float],
    vectors: dict[str, Any],
    k: int = K,
) -> dict[str, float]:
    out = {
        f"coverage@{k}": coverage(lists, len(item_ids), k),
        f"ild@{k}": intra_list_diversity(lists, vectors, k),
    }
    out.update(popularity_bias(lists, counts, k))
    return _rounded(out)


def evaluate(
    fitted: Fitted, test: Log, progress: Progress | None = None, full: bool = False
) -> dict[str, Any]:
    """The metrics at k = 10 of every list; with `full`, also by k, the funnel, beyond-accuracy and MMR."""
    progress = progress or Progress(False)
    r = rankings(fitted, test, progress)
    out: dict[str, Any] = {
        "users": len(r.relevant),
        "k": K,
        "accuracy": accuracy(r),
        "candidates": {
            f"recall@{fitted.config.fusion.candidates}": funnel(r, ())["candidates"].get(
                str(fitted.config.fusion.candidates), 0.0
            )
        },
    }
    if not full:
        return out
    universe = fitted.universe
    counts_array = np.asarray(
        fitted.stage.sources["popular"].scores(_nobody()).at(np.arange(universe.n_items))
    )
    counts = dict(zip(universe.item_ids, counts_array.tolist(), strict=True))
    content = _diversity_vectors(fitted)
    vectors = dict(zip(universe.item_ids, content, strict=True))
    out["by_k"] = {
        name: {str(k): _rounded(mean_metrics(r.lists[name], r.relevant, k)) for k in KS}
        for name in ("pipeline", "retrieval", *fitted.config.fusion.fused)
    }
    out["funnel"] = funnel(r, (10, 50, 100, 200, 300, 500))
    out["beyond"] = {
        name: beyond(lists, universe.item_ids, counts, vectors) for name, lists in r.lists.items()
    }
    out["mmr"] = mmr_report(fitted, r, content, counts, vectors)
    return out


def _nobody() -> Any:
    from services.common.sources.base import History

    return History.of([])


def _diversity_vectors(fitted: Fitted) -> npt.NDArray[np.float32]:
    source = fitted.stage.sources.get("content")
    vectors = getattr(source, "vectors", None)
    if vectors is None:
        return fitted.universe.genres
    out: npt.NDArray[np.float32] = vectors
    return out


def mmr_report(
    fitted: Fitted,
    r: Rankings,
    content: npt.NDArray[np.float32],
    counts: dict[str, float],
    vectors: dict[str, Any],
) -> dict[str, dict[str, float]]:
    """Accuracy and diversity of the pipeline re-ranked by MMR (services.common.diversity) per lambda."""
    row = fitted.universe.item_row
    out: dict[str, dict[str, float]] = {}
    for lam in MMR_LAMBDAS:
        lists: dict[str, list[str]] = {}
        for user, ranked in r.lists["pipeline"].items():
            pool = ranked[: K * POOL_FACTOR]
            if lam >= 1.0:
                lists[user] = pool[:K]
                continue
            picked, _ = mmr(r.scores[user][: len(pool)], content[[row[i] for i in pool]], K, lam)
            lists[user] = [pool[i] for i in picked]
        out[str(lam)] = {
            **_rounded(mean_metrics(lists, r.relevant, K)),
            **beyond(lists, fitted.universe.item_ids, counts, vectors),
        }
    return out
