"""How a log is held out for metrics, and how the ranker's label slices are cut: one protocol for both,
so the ranker learns on the kind of question it is measured on.

    stratified  holdout: each item's rows split `ratio` / rest at random (the published ML-100k protocol);
                ranker: K-fold stacking, each fold's labels scored by sources fitted on the other folds,
                dealt `repeats` times
    leave-last  holdout: each user's latest `leave_n`; ranker: `windows` more such windows, each scored
                by sources fitted on what comes before it (next items, as a live user is served)
    time        holdout: the latest `test_fraction` of the log; ranker: `windows` earlier time windows
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from services.trainer.data import DataError, Log
from services.trainer.splits import leave_last_n, stratified_folds, stratified_split, time_split

PROTOCOLS = ("stratified", "leave-last", "time")


@dataclass(frozen=True)
class Protocol:
    name: str = "leave-last"
    ratio: float = 0.75  # stratified: the train share of each item's rows
    leave_n: int = 1  # leave-last: each user's latest interactions held out
    test_fraction: float = 0.2  # time: the latest share of the log held out
    folds: int = 5  # stratified: K of the ranker's K-fold stacking
    repeats: int = 2  # stratified: the folds dealt again with other seeds (chosen on validation)
    windows: int = 3  # leave-last, time: label windows the ranker learns on
    label_fraction: float = 0.1  # time: each label window's share of the log

    def check(self) -> None:
        checks = {
            "name": self.name in PROTOCOLS,
            "ratio": 0 < self.ratio < 1,
            "leave_n": self.leave_n >= 1,
            "test_fraction": 0 < self.test_fraction < 1,
            "folds": self.folds >= 2,
            "repeats": self.repeats >= 1,
            "windows": self.windows >= 1,
            "label_fraction": 0 < self.label_fraction < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid protocol setting {bad[0]}={getattr(self, bad[0])!r}")

    def holdout(self, log: Log, seed: int) -> tuple[Log, Log]:
        """(train, held out) of `log`."""
        if self.name == "stratified":
            train, test = stratified_split(log, self.ratio, filter_by="item", seed=seed)
        elif self.name == "leave-last":
            train, test = leave_last_n(log, self.leave_n, seed=seed)
        else:
            train, test = time_split(log, self.test_fraction)
        if len(test) == 0 or len(train) == 0:
            raise DataError(
                f"the {self.name} holdout of {len(log)} interactions leaves nothing to train or to score"
            )
        return train, test

    def label_slices(self, log: Log, seed: int) -> Iterator[tuple[Log, Log]]:
        """(fitting slice, labelling slice) pairs of `log` for the ranker's groups."""
        if self.name == "stratified":
            for repeat in range(self.repeats):
                folds = stratified_folds(log, self.folds, seed=seed + 1000 + repeat)
                for f in range(self.folds):
                    yield log.take(folds != f), log.take(folds == f)
            return
        rest = log
        size = max(1, round(len(log) * self.label_fraction))
        for _ in range(self.windows):
            if self.name == "leave-last":
                rest, label = leave_last_n(rest, self.leave_n, seed=seed)
            elif len(rest) > size:
                rest, label = time_split(rest, size / len(rest))
            else:
                return
            if len(label) == 0:
                return
            yield rest, label

    def slice_count(self) -> int:
        return self.folds * self.repeats if self.name == "stratified" else self.windows
