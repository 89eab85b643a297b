"""`recsys evaluate` and the benchmarks: the pipeline fitted on each seed's train split of a protocol
(the dataset as a model fitted on it may know it: services.trainer.data.Dataset.known_from), scored on
its test split, then the mean / std / min / max of every number across seeds."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.common.fusion import generate
from services.trainer.data import Dataset
from services.trainer.evaluation import evaluate
from services.trainer.pipeline import Fitted, PipelineConfig, Progress, fit

LIST = 500  # candidates per latency measurement
REPEATS = 200  # scored lists per latency setting (after a warm-up)


def feature_importance(fitted: Fitted) -> dict[str, float]:
    """Total gain per ranker feature, averaged over the ranker's models (none for a deep family)."""
    if fitted.config.ranker.family != "lightgbm":
        return {}
    gains = [
        np.asarray(m.booster.feature_importance(importance_type="gain"), dtype=np.float64)  # type: ignore[attr-defined]
        for m in fitted.ranker.models
    ]
    mean = np.mean(gains, axis=0)
    return {name: round(float(v), 3) for name, v in zip(fitted.config.feature_names, mean, strict=True)}


def run_seed(data: Dataset, config: PipelineConfig, seed: int, show: bool) -> dict[str, Any]:
    started = time.perf_counter()
    seeded = dataclasses.replace(config, seed=seed)
    train, test = seeded.protocol.holdout(data.log, seed)
    progress = Progress(show, f"seed {seed}: ")
    fitted = fit(data.known_from(train), train, seeded, progress)
    with progress.step("evaluate"):
        metrics = evaluate(fitted, test, progress, full=True)
    return {
        "seed": seed,
        "sizes": {
            "train": len(train),
            "test": len(test),
            "users_scored": metrics["users"],
            "train_users": len(fitted.universe.user_ids),
            "train_items": fitted.universe.n_items,
            "candidates_per_user": config.fusion.candidates,
        },
        **{key: metrics[key] for key in ("accuracy", "by_k", "funnel", "beyond", "mmr")},
        "ranker": fitted.info,
        "feature_importance": feature_importance(fitted),
        "seconds": {**progress.seconds, "total": round(time.perf_counter() - started, 3)},
    }


def run(data: Dataset, config: PipelineConfig, seeds: Sequence[int], show: bool = False) -> dict[str, Any]:
    """Every seed end to end, then the summary across seeds."""
    started = time.perf_counter()
    per_seed = [run_seed(data, config, seed, show) for seed in seeds]
    return {
        "dataset": {"source": data.source, "fingerprint": data.fingerprint, "interactions": len(data.log)},
        "protocol": {
            **dataclasses.asdict(config.protocol),
            "relevance": "every held-out interaction (minus the user's train items)",
            "scored_users": "in train and in test",
            "catalogue": "the train split's items",
            "map": "sum of precision at each hit in the top k / number of the user's test items",
        },
        "pipeline": config.describe(),
        "seeds": list(seeds),
        "per_seed": per_seed,
        "summary": summarize(per_seed),
        "seconds": round(time.perf_counter() - started, 3),
    }


def aggregate(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 6),
        "std": round(float(a.std(ddof=1)) if a.size > 1 else 0.0, 6),
        "min": round(float(a.min()), 6),
        "max": round(float(a.max()), 6),
    }


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """{section: {name: {metric: {mean, std, min, max}}}} for accuracy, beyond, mmr and funnel."""
    out: dict[str, Any] = {}
    for section in ("accuracy", "beyond", "mmr", "funnel"):
        first = per_seed[0][section]
        out[section] = {
            name: {m: aggregate([run[section][name][m] for run in per_seed]) for m in first[name]}
            for name in first
        }
    importance = [run["feature_importance"] for run in per_seed]
    out["feature_importance"] = {
        name: round(float(np.mean([imp[name] for imp in importance])), 3) for name in importance[0]
    }
    return out


def latency_lists(fitted: Fitted, users: int = 20) -> list[tuple[Any, Any]]:
    """(feature rows, item rows) of `LIST` candidates for some users, as the ranking service gets them."""
    stage, config = fitted.stage, fitted.config
    out = []
    for user in sorted(stage.histories)[:: max(1, len(stage.histories) // users)][:users]:
        cand = generate(
            stage.sources, stage.histories[user], LIST, dataclasses.replace(config.fusion, depth=LIST)
        )
        out.append((stage.features(user, cand, config), cand.rows))
    return out


def timed(score: Any, lists: list[tuple[Any, Any]]) -> dict[str, float]:
    for matrix, rows in lists[:5]:
        score(matrix, rows)
    took = []
    for i in range(REPEATS):
        matrix, rows = lists[i % len(lists)]
        start = time.perf_counter()
        score(matrix, rows)
        took.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": round(float(np.percentile(took, 50)), 3),
        "p95_ms": round(float(np.percentile(took, 95)), 3),
    }


def served_latency(fitted: Fitted, work: Path) -> dict[str, dict[str, float]]:
    """Per thread count (1, 2), the p50 / p95 ms of the SERVED scorer over lists of `LIST` candidates:
    `fitted` exported into `work`, loaded as the ranking service loads it (LightGBM: its trees compiled
    by lleaves, as the service swaps them in; DCN-v2 / DeepFM: the ONNX model in onnxruntime)."""
    from services.common.ranker import combine
    from services.ranking.service import Config, Model
    from services.trainer.export import export

    version = export(work, fitted, {})
    lists = latency_lists(fitted)
    out: dict[str, dict[str, float]] = {}
    for threads in (1, 2):
        model = Model.load(version, Config(onnx_threads=threads))
        if model.family == "lightgbm":
            compiled = [s.compiled for s in model.scorers if s.compile(work / "lleaves")]
            if len(compiled) != len(model.scorers):
                raise SystemExit("the compiled trees disagree with LightGBM")

            # the served path scores on one thread (TreeScorer); two: the same compiled trees, n_jobs=2
            def trees(matrix: Any, rows: Any, n_jobs: int = threads, models: list[Any] = compiled) -> Any:
                x = matrix.astype(np.float64)
                return combine([c.predict(x, n_jobs=n_jobs) for c in models])

            out[f"{threads}_thread{'s' if threads > 1 else ''}"] = timed(trees, lists)
        else:
            out[f"{threads}_thread{'s' if threads > 1 else ''}"] = timed(model.ranker.score, lists)
    return out
