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
from services.trainer import events
from services.trainer.data import DataError, Dataset, Log, load
from services.trainer.evaluation import evaluate
from services.trainer.export import export
from services.trainer.pipeline import PipelineConfig, Progress, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    #: The base file (None: the events alone).
    data: Path | None
    out: Path
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    progress: bool = True
    #: The platform's event log to train from as well: a Redis URL or the embedded JSON-lines log.
    events: str | None = None
    events_prefix: str = "recsys"
    #: The rating a click stands for (clicks carry none).
    click_rating: float = 4.0


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
        read = None
        if config.events is not None:
            read = events.read(config.events, config.events_prefix, config.click_rating)
            if read.counts.get("malformed"):
                log.warning(
                    "malformed events skipped",
                    extra={"count": read.counts["malformed"], "first": read.reasons},
                )
            data = events.with_events(load(config.data) if config.data else None, read)
        elif config.data is not None:
            data = load(config.data)
        else:
            raise DataError("nothing to train on: give --data, --events or both")
        held_in, held_out = pipeline.protocol.holdout(data.log, pipeline.seed)
    evaluation_fit = fit(data, held_in, pipeline, Progress(config.progress, "train: evaluation fit: "))
    with progress.step("evaluate"):
        metrics = evaluate(evaluation_fit, held_out)
    final = fit(data, data.log, pipeline, Progress(config.progress, "train: final fit: "))
    manifest: dict[str, Any] = {
        "data": describe(data) | ({"events": read.describe()} if read is not None else {}),
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
