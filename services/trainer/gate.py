"""The quality gate (`recsys train --gate`): a new version moves CURRENT only if, on the newest held-out
slice, it is no worse than the version serving now, within a tolerance.

The slice is the run's held-out interactions that are newer than everything the serving version was
trained on (its manifest's `data.last`), so neither side has seen them. Both sides are scored through
the services' own handlers in this process (services/served_quality.py), never the trainer's objects:

* the candidate is the run's evaluation fit (fitted on the log minus the holdout), exported to a hidden
  scratch root beside the versions; its users' histories are the log minus the holdout;
* the serving version gets the log's interactions newer than its training data as live feedback (what
  the running features service would hold), so its users' histories are the same log minus the slice.

The slice is small (a user's newest held-out interactions, for the users active since the serving
version was trained): measured on MovieLens latest-small, 62 users' single newest rating, where the
point estimates of two versions differ by more than any useful tolerance by chance alone
(bench/replay.py). So the gate refuses only when it is confident the new version is worse: when the
upper end of the 95% interval of the per-user paired difference (new - serving) is below -tolerance.
A slice of one user (no interval) compares the point estimates.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactVersion
from services.features.store import Event, EventType
from services.served_quality import Answers, in_process
from services.trainer.data import Log
from services.trainer.metrics import per_user_metrics
from services.trainer.pipeline import Fitted

if TYPE_CHECKING:
    from services.experiment.analysis import Estimate

log = logging.getLogger(__name__)

K = 10
METRICS = (f"ndcg@{K}", f"map@{K}", f"recall@{K}", f"precision@{K}")


@dataclass(frozen=True)
class GateConfig:
    #: How much lower than the serving version's the new version's metric may be and still pass.
    tolerance: float = 0.005
    metric: str = f"ndcg@{K}"

    def check(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"--gate-tolerance {self.tolerance}: expected a number >= 0")
        if self.metric not in METRICS:
            raise ValueError(f"--gate-metric {self.metric}: expected one of {', '.join(METRICS)}")


def verdict(
    config: GateConfig,
    passed: bool,
    reason: str,
    serving: str | None,
    new: float | None = None,
    served: float | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The manifest's `gate` record."""
    return {
        "passed": passed,
        "metric": config.metric,
        "new": new,
        "serving": served,
        "serving_version": serving,
        "tolerance": config.tolerance,
        "reason": reason,
        **more,
    }


def _feedback(log_slice: Log) -> list[Event]:
    return [
        Event(user_id=u, item_id=i, type=EventType.RATING, timestamp_ms=int(t * 1000), rating=float(r))
        for u, i, r, t in zip(
            log_slice.users.tolist(),
            log_slice.items.tolist(),
            log_slice.ratings.tolist(),
            log_slice.timestamps.tolist(),
            strict=True,
        )
    ]


def judge(
    config: GateConfig,
    root: Path,
    serving: ArtifactVersion,
    candidate: Fitted,
    held_in: Log,
    held_out: Log,
) -> dict[str, Any]:
    """Score `candidate` (the evaluation fit) and `serving` on the newest held-out slice; the verdict."""
    from services.trainer.export import export

    trained_through = float(serving.manifest.get("data", {}).get("last", -math.inf))
    newer = held_out.timestamps > trained_through
    if not newer.any():
        return verdict(
            config,
            False,
            f"no held-out interaction is newer than the serving version's data (through {trained_through}): "
            "nothing to compare on",
            serving.version,
        )
    slice_ = held_out.take(newer)
    relevant: dict[str, set[str]] = {}
    for user, item in zip(slice_.users.tolist(), slice_.items.tolist(), strict=True):
        relevant.setdefault(user, set()).add(item)
    users = sorted(relevant)
    feedback = _feedback(held_in.take(held_in.timestamps > trained_through))
    # Beside the versions (same volume, room for a version), hidden so nothing lists or serves it.
    with tempfile.TemporaryDirectory(dir=root, prefix=".gate-") as scratch:
        scored = export(Path(scratch), candidate, {"data": {}, "metrics": {}}, promote=False)
        new_answers = in_process(Path(scratch), users, K, version=scored.version)
    served_answers = in_process(root, users, K, version=serving.version, feedback=feedback)
    new, served = new_answers.metrics(relevant, K), served_answers.metrics(relevant, K)
    a, b = new[config.metric], served[config.metric]
    passed, difference = decide(
        _per_user(new_answers, users, relevant, config.metric),
        _per_user(served_answers, users, relevant, config.metric),
        config.tolerance,
    )
    low, high = difference.ci()
    interval = (
        f"difference {difference.value:+.4f}, 95% interval {low:+.4f}..{high:+.4f}"
        if math.isfinite(high)
        else "one user: no interval"
    )
    comparison = (
        f"{config.metric} {a:.4f} vs serving {serving.version} {b:.4f} "
        f"({interval}; tolerance {config.tolerance})"
    )
    reason = f"{'passed' if passed else 'refused'}: {comparison} on {len(users)} users' newest interactions"
    return verdict(
        config,
        passed,
        reason,
        serving.version,
        a,
        b,
        difference={
            "mean": round(difference.value, 6),
            "ci95": [round(low, 6), round(high, 6)] if math.isfinite(high) else None,
        },
        slice={
            "users": len(users),
            "interactions": len(slice_),
            "after": trained_through,
            "through": float(np.max(slice_.timestamps)),
        },
        metrics={"new": new, "serving": served},
    )


def decide(
    new: npt.NDArray[np.float64], serving: npt.NDArray[np.float64], tolerance: float
) -> tuple[bool, Estimate]:
    """Whether the new version passes, given each slice user's metric under both (paired by position),
    and the mean difference new - serving: refused only when the upper end of its 95% interval is below
    -tolerance; with one user (no interval), when the difference itself is."""
    # here, not at the top: the analysis module loads scipy.stats, and every `recsys` command loads this
    from services.experiment.analysis import mean_estimate

    difference = mean_estimate(new - serving)
    high = difference.ci()[1]
    return (high if math.isfinite(high) else difference.value) >= -tolerance, difference


def _per_user(
    answers: Answers, users: list[str], relevant: dict[str, set[str]], metric: str
) -> npt.NDArray[np.float64]:
    """`metric` of each of `users` (all have relevant items), in that order: one side of the pairs."""
    _, values = per_user_metrics({u: answers.items.get(u, []) for u in users}, relevant, K)
    return values[metric]
