"""Feature distributions and the population stability index (PSI) between two of them.

A `Histogram` bins one feature on fixed edges: bin 0 is (-inf, e0], bin i is (e(i-1), ei], the last is
(e(n-1), inf), and missing values (NaN) are counted apart. The trainer fixes the edges at the deciles of
the training values (`reference`) and writes the histograms into the version's manifest; the ranking
service counts what it scores on the same edges (`LiveCounts`), and PSI compares the two:

    PSI = sum over bins (including the missing bin) of (live - ref) * ln(live / ref)

with each side's counts as shares; an empty bin's share is taken as EPSILON, so a bin that one side
never saw contributes a large but finite term. PSI > 0.2 is the classic "the live data no longer looks
like the training data" threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: The share an empty bin is taken to have (on both sides), so ln never sees 0.
EPSILON = 1e-4
#: The usual alarm level.
THRESHOLD = 0.2
QUANTILES = np.linspace(0.1, 0.9, 9)


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]  # increasing
    counts: tuple[int, ...]  # len(edges) + 1
    missing: int = 0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(f"histogram: {len(self.counts)} counts for {len(self.edges)} edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("histogram: edges must increase")

    @property
    def total(self) -> int:
        return sum(self.counts) + self.missing

    def shares(self) -> npt.NDArray[np.float64]:
        """Bins then the missing bin, as shares of the total (all EPSILON when empty)."""
        counts = np.asarray([*self.counts, self.missing], dtype=np.float64)
        total = counts.sum()
        return np.maximum(counts / total, EPSILON) if total > 0 else np.full(counts.size, EPSILON)

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "counts": list(self.counts), "missing": self.missing}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Histogram:
        return cls(
            tuple(float(e) for e in raw["edges"]),
            tuple(int(c) for c in raw["counts"]),
            int(raw.get("missing", 0)),
        )


def bin_index(edges: Sequence[float], values: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """The bin of each (finite or infinite) value: searchsorted on the right-closed bins."""
    out: npt.NDArray[np.int64] = np.searchsorted(np.asarray(edges, np.float64), values, side="left")
    return out


def histogram(edges: Sequence[float], values: npt.NDArray[np.floating]) -> Histogram:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    missing = np.isnan(v)
    counts = np.bincount(bin_index(edges, v[~missing]), minlength=len(edges) + 1)
    return Histogram(tuple(float(e) for e in edges), tuple(int(c) for c in counts), int(missing.sum()))


def reference(values: npt.NDArray[np.floating]) -> Histogram:
    """A histogram whose edges are the deciles of the finite values (repeated deciles merged: a feature
    with a few distinct values gets one bin per value)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    # values of the data (not interpolated between them), so a discrete feature keeps clean bins
    edges = np.unique(np.quantile(finite, QUANTILES, method="lower")) if finite.size else np.empty(0)
    return histogram([float(e) for e in edges], v)


def psi(ref: Histogram, live: Histogram) -> float:
    """PSI of `live` against `ref` (same edges); NaN when `live` holds nothing."""
    if ref.edges != live.edges:
        raise ValueError("psi: the histograms have different edges")
    if live.total == 0 or ref.total == 0:
        return math.nan
    r, li = ref.shares(), live.shares()
    return float(np.sum((li - r) * np.log(li / r)))


def references(names: Sequence[str], matrix: npt.NDArray[np.floating]) -> dict[str, Histogram]:
    """One reference histogram per column of `matrix`, by name."""
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError(f"references: {len(names)} names for a matrix of shape {matrix.shape}")
    return {name: reference(matrix[:, j]) for j, name in enumerate(names)}


class LiveCounts:
    """Counts of scored rows on fixed per-feature edges, for many rows at once (the ranking service).

    Edges are padded to a common width with +inf so one comparison bins a whole block of rows."""

    def __init__(self, names: Sequence[str], edges: Sequence[Sequence[float]]) -> None:
        if len(names) != len(edges):
            raise ValueError(f"live counts: {len(names)} names, {len(edges)} edge lists")
        self.names = list(names)
        self.widths = [len(e) for e in edges]
        width = max(self.widths, default=0)
        self._edges = np.full((len(names), width), np.inf)
        for j, e in enumerate(edges):
            self._edges[j, : len(e)] = e
        self.counts = np.zeros((len(names), width + 1), dtype=np.int64)
        self.missing = np.zeros(len(names), dtype=np.int64)
        self.rows = 0

    def add(self, rows: npt.NDArray[np.floating]) -> None:
        """Count `rows` ((n, len(names))); NaN counts as missing."""
        x = np.asarray(rows, dtype=np.float64)
        missing = np.isnan(x)
        # bin = how many edges lie strictly below the value: (e(i-1), ei] -> i
        bins = (x[:, :, None] > self._edges[None, :, :]).sum(axis=2)
        cells = bins + np.arange(x.shape[1]) * self.counts.shape[1]  # flat index into counts
        self.counts += np.bincount(cells[~missing], minlength=self.counts.size).reshape(self.counts.shape)
        self.missing += missing.sum(axis=0)
        self.rows += x.shape[0]

    def merge(self, other: LiveCounts) -> None:
        """Add `other`'s counts (same names and edges) to these."""
        self.counts += other.counts
        self.missing += other.missing
        self.rows += other.rows

    def histograms(self) -> dict[str, Histogram]:
        out = {}
        for j, name in enumerate(self.names):
            w = self.widths[j]
            counts = tuple(self.counts[j, : w + 1].tolist())
            out[name] = Histogram(tuple(float(e) for e in self._edges[j, :w]), counts, int(self.missing[j]))
        return out


def psi_by_feature(
    names: Sequence[str], reference_matrix: npt.NDArray[np.floating], live_matrix: npt.NDArray[np.floating]
) -> dict[str, float]:
    """PSI of each column of `live_matrix` against the same column of `reference_matrix`, binned on the
    reference's deciles (`references`), as the ranking service's counts are judged against a version's
    manifest: e.g. the feature rows of two time windows of a log."""
    if live_matrix.ndim != 2 or live_matrix.shape[1] != len(names):
        raise ValueError(f"psi_by_feature: {len(names)} names for a live matrix of shape {live_matrix.shape}")
    refs = references(names, reference_matrix)
    return {
        name: psi(refs[name], histogram(refs[name].edges, live_matrix[:, j])) for j, name in enumerate(names)
    }
