"""`recsys train`: fit the pipeline on the log minus a holdout and score the holdout (the manifest's
metrics), then fit it again on the whole log and export that (so no user or item of the log is unknown
to the served version), and point CURRENT at it."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.artifacts import ArtifactVersion
from services.trainer.data import DataError, Dataset, Log, load
from services.trainer.evaluation import evaluate
from services.trainer.export import export
from services.trainer.pipeline import PipelineConfig, Progress, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    progress: bool = True


def counts(log_slice: Log) -> dict[str, int]:
    return {
        "interactions": len(log_slice),
        "users": len(set(log_slice.users.tolist())),
        "items": len(set(log_slice.items.tolist())),
    }


def train(config: TrainConfig) -> ArtifactVersion:
    """The whole job; DataError or ValueError (a source that cannot fit: FitError) before anything is
    published."""
    pipeline = config.pipeline
    pipeline.check()
    writable(config.out)
    started = time.perf_counter()
    progress = Progress(config.progress, "train: ")
    with progress.step("load"):
        data = load(config.data)
        held_in, held_out = pipeline.protocol.holdout(data.log, pipeline.seed)
    evaluation_fit = fit(data, held_in, pipeline, Progress(config.progress, "train: evaluation fit: "))
    with progress.step("evaluate"):
        metrics = evaluate(evaluation_fit, held_out)
    final = fit(data, data.log, pipeline, Progress(config.progress, "train: final fit: "))
    manifest: dict[str, Any] = {
        "data": describe(data),
        "metrics": {
            **metrics,
            "protocol": pipeline.protocol.name,
            "fitted_on": counts(held_in),
            "held_out": counts(held_out),
        },
        "training": {
            "evaluation_fit": evaluation_fit.info,
            "final_fit": {**final.info, **counts(data.log)},
            "seconds": round(time.perf_counter() - started, 3),
        },
    }
    with progress.step("export"):
        version = export(config.out, final, manifest)
    log.info("trained", extra={"version": version.version, "seconds": manifest["training"]["seconds"]})
    return version


def writable(root: Path) -> None:
    """Fail before minutes of fitting, not at export: ValueError when `root` cannot take a version."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {root}: cannot create the artifact root ({e.strerror})") from e
    if not os.access(root, os.W_OK | os.X_OK):
        raise ValueError(f"--out {root}: the artifact root is not writable by this user (uid {os.getuid()})")


def describe(data: Dataset) -> dict[str, Any]:
    if len(data.log) == 0:
        raise DataError(f"{data.source}: no interactions")
    return {
        "source": data.source,
        "fingerprint": data.fingerprint,
        "files": data.files,
        "counts": {**counts(data.log), "catalogue": len(data.catalog)},
        "first": float(data.log.timestamps[0]),
        "last": float(data.log.timestamps[-1]),
    }
