"""`recsys train`: fit the pipeline on the log minus a holdout and score the holdout (the manifest's
metrics), then fit it again on the whole log and export that (so no user or item of the log is unknown
to the served version), and point CURRENT at it — with `--gate`, only if it is no worse than the serving
version on the newest held-out slice (services/trainer/gate.py).

With `--events` and a CURRENT trained from the same event source, the run is incremental: the
interactions CURRENT was fitted on (its interactions.npz) plus the events after its watermark. Once a
version is promoted, the store is told the log is consumed through its watermark so retention may trim;
a refused version marks nothing, so the next run reads the same events again (plus newer ones).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.artifacts import ArtifactError, ArtifactVersion, open_current, prune
from services.trainer import events, gate
from services.trainer.data import DataError, Dataset, Item, Log, load
from services.trainer.evaluation import evaluate
from services.trainer.export import export
from services.trainer.pipeline import Fitted, PipelineConfig, Progress, fit

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
    #: The embedded store's catalogue when it is not beside its log (None: catalogue.jsonl beside it).
    events_catalogue: Path | None = None
    #: The rating a click stands for (clicks carry none).
    click_rating: float = 4.0
    #: Read the whole event log (with the base file) even when CURRENT holds an earlier read.
    full_events: bool = False
    #: Promote only through the quality gate (None: always promote).
    gate: gate.GateConfig | None = None
    #: Retention after publishing: keep this many newest versions besides CURRENT, PINNED and the
    #: rollback target (None: keep all).
    keep: int | None = None
    #: `recsys retrain`: with --events, stop with NothingNew when no click or rating followed CURRENT's
    #: watermark (a round with nothing to learn publishes nothing).
    require_new_events: bool = False


class NothingNew(DataError):
    """No new clicks or ratings since CURRENT's watermark."""


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
    if config.gate is not None:
        config.gate.check()
    if config.keep is not None and config.keep < 1:
        raise ValueError(f"--keep {config.keep}: keep at least one version")
    writable(config.out)
    started = time.perf_counter()
    progress = Progress(config.progress, "train: ")
    serving = _serving(config.out)
    with progress.step("load"):
        read = None
        base = load(config.data) if config.data is not None else None
        if config.events is not None:
            since, earlier = _earlier_read(config, serving, base)
            read = events.read(
                config.events,
                config.events_prefix,
                config.click_rating,
                since=since or None,
                seen=earlier.seen_ids() if earlier is not None else None,
                catalogue_file=config.events_catalogue,
            )
            if read.counts.get("malformed"):
                log.warning(
                    "malformed events skipped",
                    extra={"count": read.counts["malformed"], "first": read.reasons},
                )
            if config.require_new_events and not read.counts.get("interactions"):
                raise NothingNew(f"no new clicks or ratings in {read.source} after {since or 'the start'}")
            if earlier is not None and base is None and serving is not None:
                base = _previous_dataset(serving, earlier)
            data, interactions = events.with_events(base, earlier, read)
        elif base is not None:
            data, interactions = base, events.Interactions.of_base(base.log)
        else:
            raise DataError("nothing to train on: give --data, --events or both")
        held_in, held_out = pipeline.protocol.holdout(data.log, pipeline.seed)
    evaluation_fit = fit(data, held_in, pipeline, Progress(config.progress, "train: evaluation fit: "))
    with progress.step("evaluate"):
        metrics = evaluate(evaluation_fit, held_out)
    verdict = None
    if config.gate is not None:
        with progress.step("gate"):
            verdict = _gate(config, config.gate, serving, evaluation_fit, held_in, held_out)
    final = fit(data, data.log, pipeline, Progress(config.progress, "train: final fit: "))
    described = describe(data) | {"base": _base_of(config, base, serving)}
    if read is not None:
        described["events"] = read.describe() | {
            "prefix": config.events_prefix,
            "earlier": since_version(read, serving),
        }
    manifest: dict[str, Any] = {
        "data": described,
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
    if verdict is not None:
        manifest["gate"] = verdict
    promote = verdict is None or bool(verdict["passed"])
    with progress.step("export"):
        version = export(config.out, final, manifest, promote=promote, interactions=interactions)
    log.info(
        "trained",
        extra={"version": version.version, "promoted": promote, "seconds": manifest["training"]["seconds"]},
    )
    if promote and read is not None:
        _mark_consumed(config, read.watermark)
    if config.keep is not None:
        deleted = prune(config.out, config.keep)
        if deleted:
            log.info("old versions pruned", extra={"deleted": deleted, "keep": config.keep})
    return version


def since_version(read: events.EventRead, serving: ArtifactVersion | None) -> str | None:
    """The version an incremental read continued from (None: the log was read from its start)."""
    return serving.version if read.since and serving is not None else None


def _serving(root: Path) -> ArtifactVersion | None:
    """CURRENT, verified; None when there is none or it cannot be read (nothing serves it either)."""
    if not (root / "CURRENT").is_file():
        return None
    try:
        return open_current(root)
    except ArtifactError as e:
        log.warning(
            "the serving version is unreadable: no incremental read, no gate", extra={"reason": str(e)}
        )
        return None


def _earlier_read(
    config: TrainConfig, serving: ArtifactVersion | None, base: Dataset | None
) -> tuple[str, events.Interactions | None]:
    """(the watermark to read after, the interactions CURRENT was fitted on) for an incremental run;
    ("", None) for a full read, with the reason logged."""
    assert config.events is not None
    reason = _why_full(config, serving, base)
    if reason is not None:
        log.info("reading the event log in full", extra={"reason": reason})
        return "", None
    assert serving is not None
    earlier = events.Interactions.load(serving.file(events.INTERACTIONS_FILE))
    return str(serving.manifest["data"]["events"]["watermark"]), earlier


def _why_full(config: TrainConfig, serving: ArtifactVersion | None, base: Dataset | None) -> str | None:
    assert config.events is not None
    if config.full_events:
        return "--full-events"
    if serving is None:
        return "no serving version"
    read = serving.manifest.get("data", {}).get("events")
    if not read or not read.get("watermark"):
        return f"{serving.version} was not trained from the event log"
    source = events.shown_source(config.events)
    if (read.get("source"), read.get("prefix")) != (source, config.events_prefix):
        return f"{serving.version} read {read.get('source')} (prefix {read.get('prefix')}), not {source}"
    if events.INTERACTIONS_FILE not in serving.manifest["files"]:
        return f"{serving.version} has no {events.INTERACTIONS_FILE}"
    recorded = serving.manifest["data"].get("base")
    if base is not None and (recorded or {}).get("fingerprint") != base.fingerprint:
        return f"the base file {base.source} is not the one {serving.version} was trained on"
    return None


def _base_of(config: TrainConfig, base: Dataset | None, serving: ArtifactVersion | None) -> Any:
    """The base file a version's interactions include: this run's, or the one an incremental run
    inherited with CURRENT's interactions."""
    if config.data is not None and base is not None:
        return {"source": base.source, "fingerprint": base.fingerprint}
    if serving is not None and config.events is not None:
        return serving.manifest.get("data", {}).get("base")
    return None


def _previous_dataset(serving: ArtifactVersion, earlier: events.Interactions) -> Dataset:
    """Without --data, an incremental run's catalogue is the serving version's (titles and genres)."""
    catalog: dict[str, Item] = {}
    with serving.file("items.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            genres = tuple(g for g in row["genres"].split("|") if g)
            catalog[row["item_id"]] = Item(title=row["title"], genres=genres)
    data = serving.manifest.get("data", {})
    return Dataset(
        str(data.get("source", serving.version)), str(data.get("fingerprint", "")), {}, earlier.log, catalog
    )


def _gate(
    config: TrainConfig,
    gate_config: gate.GateConfig,
    serving: ArtifactVersion | None,
    candidate: Fitted,
    held_in: Log,
    held_out: Log,
) -> dict[str, Any]:
    if serving is None:
        verdict = gate.verdict(gate_config, True, "passed: no serving version to compare with", None)
    else:
        verdict = gate.judge(gate_config, config.out, serving, candidate, held_in, held_out)
    # One line with the verdict in its text, whatever the log handler shows of `extra`.
    (log.info if verdict["passed"] else log.warning)(
        "quality gate %s", verdict["reason"], extra={"passed": verdict["passed"]}
    )
    return verdict


def _mark_consumed(config: TrainConfig, watermark: str) -> None:
    """After promotion; a store that cannot be told only delays retention (the next promotion tells it)."""
    assert config.events is not None
    try:
        events.mark_consumed(config.events, config.events_prefix, watermark)
    except Exception as e:  # the version is published and serving: report, do not fail the run
        log.warning("the event log could not be marked consumed: %s", e)


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
