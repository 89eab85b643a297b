"""What the ranking service scored, counted for drift detection (services.common.drift).

Each request gives `sample_rows` of its scored rows, drawn at random, to the version's counts,
after its response is on its way (`RankingService` schedules `observe` on the event loop), on the edges
of the version's reference histograms. Counts are kept in windows of `window_seconds`: the one being
counted and the last complete one, and the sum of every complete window (what the metrics export as a
cumulative counter), so memory is bounded by (features x bins x 3) whatever the traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.common.drift import Histogram, LiveCounts, psi

#: Rows a window needs before its PSI is reported as a metric (fewer are mostly noise).
MIN_ROWS = 200


@dataclass(frozen=True)
class Window:
    start: float  # epoch seconds
    end: float
    rows: int
    histograms: dict[str, Histogram]


class FeatureMonitor:
    def __init__(
        self,
        names: list[str],
        reference: Mapping[str, Histogram],
        sample_rows: int,
        window_seconds: float,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        """`reference`: by feature name (a version without one monitors nothing); only the features
        of `names` (the ranker's columns, in order) that have a reference are counted."""
        self.reference = {n: reference[n] for n in names if n in reference}
        self._columns = np.asarray([i for i, n in enumerate(names) if n in reference], dtype=np.int64)
        self.sample_rows = sample_rows
        self.window_seconds = window_seconds
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._start = clock()
        self._current = self._fresh()
        self._completed = self._fresh()
        self.previous: Window | None = None

    def _fresh(self) -> LiveCounts:
        return LiveCounts(list(self.reference), [h.edges for h in self.reference.values()])

    @property
    def enabled(self) -> bool:
        return bool(self.reference) and self.sample_rows > 0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window_seconds:
            self.previous = Window(self._start, now, self._current.rows, self._current.histograms())
            self._completed.merge(self._current)
            self._start = now
            self._current = self._fresh()

    def observe(self, matrix: npt.NDArray[np.float32]) -> None:
        """Count a sample of one request's scored rows ((n, len(names)))."""
        if not self.enabled or matrix.shape[0] == 0:
            return
        self._roll(self._clock())
        n = matrix.shape[0]
        # with replacement: as good a sample, and a tenth of the cost of drawing without
        rows = self._rng.integers(0, n, self.sample_rows) if n > self.sample_rows else slice(None)
        self._current.add(matrix[rows][:, self._columns])

    def current(self) -> Window:
        """The window being counted (a complete one first ends, if its time is up)."""
        self._roll(self._clock())
        return self.peek()

    def peek(self) -> Window:
        """The window being counted, as it is: never rolls, so a metrics thread may call it."""
        counts = self._current
        return Window(self._start, self._clock(), counts.rows, counts.histograms())

    def cumulative(self) -> dict[str, Histogram]:
        """Every row counted since the version was loaded (never rolls: a metrics thread may call it)."""
        total = self._fresh()
        total.merge(self._completed)
        total.merge(self._current)
        return total.histograms()

    def psi(self, min_rows: int = MIN_ROWS) -> dict[str, float]:
        """PSI per feature against the reference: of the window being counted once it holds
        `min_rows`, else of the last complete one; empty when neither does."""
        window = self.peek()
        if window.rows < min_rows:
            if self.previous is None or self.previous.rows < min_rows:
                return {}
            window = self.previous
        return {n: psi(self.reference[n], h) for n, h in window.histograms.items()}
