"""The one pipeline: sources -> fusion -> candidates -> features -> LightGBM ranker.

    fit(data, log, config):
      stage A  for each label slice of `log` (services.trainer.protocols): the sources and the feature
               rows fitted on the slice's fitting part, each labelled user's fused candidates and their
               features, labels = the candidates in the slice's labelling part; all groups pooled ->
               the ranker (services.trainer.ranker)
      stage B  the sources and the feature rows fitted on the whole of `log`: what is exported and served

`recsys train` fits it (twice: on the log minus a holdout for the manifest's metrics, then on the whole
log for export), `recsys evaluate` and the benchmarks fit it on a protocol's train split. Candidates and
features are made one user at a time by the same functions the retrieval and ranking services call
(services.common.fusion.generate, services.common.ranker_features.assemble), on the fitted objects
themselves, so what is measured is what is served.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from services.common.content_space import ContentSpace
from services.common.extras import deep_missing
from services.common.fusion import CandidateColumns, FusionParams, generate
from services.common.ranker import Ensemble
from services.common.ranker_features import assemble, ranker_features
from services.common.sources import SOURCE_NAMES, source_class
from services.common.sources.base import History, Rows, Source
from services.trainer import ranker
from services.trainer.data import Dataset, Log
from services.trainer.protocols import Protocol
from services.trainer.ranker import Groups, RankerParams
from services.trainer.stats import feature_rows
from services.trainer.universe import Universe

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
T = TypeVar("T")

DEFAULT_SOURCES = ("ease", "cooc", "rp3", "seq", "seqease", "recent", "als", "content", "popular")


def _default_params() -> dict[str, Any]:
    return {name: source_class(name).Params() for name in SOURCE_NAMES}


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of the pipeline; `with_setting` changes one by its dotted name (the `--set` of
    `recsys train`, `recsys evaluate` and the validation tools)."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    source_params: Mapping[str, Any] = field(default_factory=_default_params)
    fusion: FusionParams = field(default_factory=FusionParams)
    ranker: RankerParams = field(default_factory=RankerParams)
    protocol: Protocol = field(default_factory=Protocol)
    seed: int = 42
    threads: int = 2

    def check(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCE_NAMES]
        if unknown or not self.sources:
            raise ValueError(f"sources: unknown {unknown} (known: {', '.join(SOURCE_NAMES)})")
        for name in self.sources:
            problem = source_class(name).unavailable()
            if problem:
                raise ValueError(f"source {name} {problem}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources: listed twice in {','.join(self.sources)}")
        missing = [s for s in self.fusion.fused if s not in self.sources]
        if missing or not self.fusion.fused:
            raise ValueError(
                f"fusion.fused: {missing or 'nothing'} not among the sources {','.join(self.sources)}"
            )
        if not 1 <= self.fusion.candidates <= 2000 or self.fusion.depth < 1 or not self.fusion.k >= 0:
            raise ValueError(
                f"fusion: candidates must be in 1..2000, depth >= 1, k >= 0 (got {self.fusion.candidates}, "
                f"{self.fusion.depth}, {self.fusion.k})"
            )
        if self.ranker.rounds < 1 or self.ranker.seeds < 1 or self.ranker.num_leaves < 2:
            raise ValueError("ranker: rounds and seeds must be >= 1, num_leaves >= 2")
        if self.ranker.family not in ranker.FAMILIES:
            raise ValueError(f"ranker.family: {self.ranker.family!r} (known: {', '.join(ranker.FAMILIES)})")
        if self.ranker.family != "lightgbm":
            problem = deep_missing()
            if problem:
                raise ValueError(f"ranker.family {self.ranker.family} {problem}")
            r = self.ranker
            if min(r.deep_epochs, r.deep_embedding, r.deep_hidden, r.deep_groups_per_batch) < 1:
                raise ValueError(
                    "ranker: deep_epochs, deep_embedding, deep_hidden, deep_groups_per_batch must be >= 1"
                )
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.protocol.check()

    def params(self, source: str) -> Any:
        return self.source_params[source]

    def with_setting(self, name: str, raw: str) -> PipelineConfig:
        """This config with one setting changed: `sources`, `seed`, `threads`, `fusion.FIELD`,
        `ranker.FIELD`, `protocol.FIELD` or `SOURCE.FIELD`, the value parsed as the field's type (a
        tuple takes comma-separated items). ValueError naming the setting when it does not exist or
        the value does not parse."""
        head, _, tail = name.partition(".")
        if not tail:
            if head not in ("sources", "seed", "threads"):
                raise ValueError(f"unknown setting {name!r}")
            return dataclasses.replace(self, **{head: _parse(getattr(self, head), raw, name)})
        if head in ("fusion", "ranker", "protocol"):
            part = getattr(self, head)
            return dataclasses.replace(self, **{head: _replace(part, tail, raw, name)})
        if head in self.source_params:
            params = dict(self.source_params)
            params[head] = _replace(params[head], tail, raw, name)
            return dataclasses.replace(self, source_params=params)
        raise ValueError(
            f"unknown setting {name!r} (sources, seed, threads, fusion.*, ranker.*, protocol.*, SOURCE.*)"
        )

    def with_settings(self, pairs: Iterable[str]) -> PipelineConfig:
        """`with_setting` for each "NAME=VALUE" of `pairs`, then `check`; ValueError naming a bad one."""
        config = self
        for pair in pairs:
            name, sep, raw = pair.partition("=")
            if not sep:
                raise ValueError(f"expected NAME=VALUE, got {pair!r}")
            config = config.with_setting(name.strip(), raw.strip())
        config.check()
        return config

    def describe(self) -> dict[str, Any]:
        """JSON for the manifest: the pipeline the version was fitted with."""
        return {
            "sources": list(self.sources),
            "source_params": {s: dataclasses.asdict(self.params(s)) for s in self.sources},
            "fusion": {**dataclasses.asdict(self.fusion), "fused": list(self.fusion.fused)},
            "ranker": dataclasses.asdict(self.ranker),
            "protocol": dataclasses.asdict(self.protocol),
            "seed": self.seed,
        }

    @property
    def feature_names(self) -> list[str]:
        return ranker_features(self.sources)


def _parse(current: Any, raw: str, name: str) -> Any:
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            return tuple(kind(v) for v in raw.split(",") if v)
        return type(current)(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a {type(current).__name__}") from None


def _replace(part: Any, field_name: str, raw: str, name: str) -> Any:
    if field_name not in {f.name for f in dataclasses.fields(part)}:
        raise ValueError(f"unknown setting {name!r}")
    return dataclasses.replace(part, **{field_name: _parse(getattr(part, field_name), raw, name)})


class Progress:
    """Wall-clock seconds per named step; with `show`, a line on stderr as each ends and bars on a terminal."""

    def __init__(self, show: bool, prefix: str = "") -> None:
        self.show = show
        self.prefix = prefix
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 3)
        if self.show:
            print(f"{self.prefix}{name}: {took:.1f} s", file=sys.stderr, flush=True)

    def bar(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
        # drawn on a terminal only: in a log file its redraws would be noise (the step lines remain)
        return tqdm(items, desc=desc, total=total, disable=None if self.show else True, leave=False)


@dataclass
class Stage:
    """What serving would hold after fitting on one slice of the log."""

    universe: Universe
    sources: dict[str, Source]
    item_rows: F32
    user_rows: F32
    histories: dict[str, History]
    #: how the content vectors were made (exported: serving makes a new item's the same way)
    content_space: ContentSpace

    def candidates(self, user: str, config: PipelineConfig) -> CandidateColumns:
        history = self.histories.get(user) or History.of([])
        return generate(self.sources, history, config.fusion.candidates, config.fusion)

    def features(self, user: str, cand: CandidateColumns, config: PipelineConfig) -> F32:
        row = self.universe.user_row.get(user)
        values = self.user_rows[row] if row is not None else np.empty(0, dtype=np.float32)
        return assemble(config.sources, values, self.item_rows[cand.rows], cand)


def fit_stage(
    universe: Universe, log_slice: Log, config: PipelineConfig, seed: int, progress: Progress
) -> Stage:
    """Every source and the feature rows on `log_slice`."""
    data = universe.fit_data(log_slice, seed, config.threads)
    sources: dict[str, Source] = {}
    for name in config.sources:
        with progress.step(f"source {name}"):
            sources[name] = source_class(name).fit(data, config.params(name))
    with progress.step("feature rows"):
        item_rows, user_rows = feature_rows(universe, log_slice)
    return Stage(universe, sources, item_rows, user_rows, universe.histories(log_slice), data.content_space)


@dataclass
class Fitted:
    """The fitted pipeline: stage B's sources and rows, stage A's ranker."""

    config: PipelineConfig
    stage: Stage
    ranker: Ensemble
    info: dict[str, Any]

    @property
    def universe(self) -> Universe:
        return self.stage.universe

    def candidates_and_features(
        self, users: list[str], progress: Progress
    ) -> tuple[list[CandidateColumns], F32]:
        """Each user's candidates, and the ranker's input rows of all of them stacked (in user order)."""
        cands = [self.stage.candidates(u, self.config) for u in progress.bar(users, "candidates")]
        matrix = [self.stage.features(u, c, self.config) for u, c in zip(users, cands, strict=True)]
        stacked = np.vstack(matrix) if matrix else np.empty((0, len(self.config.feature_names)), np.float32)
        return cands, stacked

    def score(self, cands: list[CandidateColumns], stacked: F32) -> list[F64]:
        """The ranker's scores of each candidate list (`candidates_and_features`, or its rows changed)."""
        rows = np.concatenate([c.rows for c in cands]) if cands else None
        return self.ranker.score_lists(stacked, [len(c) for c in cands], rows)

    def rank(self, users: list[str], progress: Progress) -> dict[str, tuple[CandidateColumns, F64]]:
        """Each user's candidates and the ranker's score of each (served order: score descending)."""
        cands, stacked = self.candidates_and_features(users, progress)
        scores = self.score(cands, stacked)
        return {u: (c, s) for u, c, s in zip(users, cands, scores, strict=True)}

    def recommend(self, items: Sequence[str], k: int = 10, user: str | None = None) -> tuple[list[str], F64]:
        """The top `k` item ids and their ranker scores for a live history `items` (ids, most recent
        first; ids the version does not know are left out), as the services answer it: the fused
        candidates of that history (topped up with popular items), the ranker over them with `user`'s
        feature row when the version has one (a new user has none: NaN), the history excluded; with no
        history at all, the fused order (as the ranking service serves a cold user). (No arm's
        overrides: no MMR, no exploration slots, no business rules.)"""
        known = [self.universe.item_row[i] for i in items if i in self.universe.item_row]
        history = History.of(known)
        cand = generate(self.stage.sources, history, self.config.fusion.candidates, self.config.fusion)
        row = self.universe.user_row.get(user) if user is not None else None
        values = self.stage.user_rows[row] if row is not None else np.empty(0, dtype=np.float32)
        matrix = assemble(self.config.sources, values, self.stage.item_rows[cand.rows], cand)
        scores = self.ranker.score(matrix, cand.rows) if items else cand.fused.astype(np.float64)
        order = np.argsort(-scores, kind="stable")[:k]
        return self.universe.ids(cand.rows[order]), scores[order]


def labelled_groups(
    stage: Stage, label_log: Log, config: PipelineConfig, progress: Progress
) -> tuple[list[tuple[F32, F64]], list[Rows], float]:
    """One group per user of the labelling slice known to the fitting slice: (features, labels), and its
    candidates' item rows; and the share of labelled interactions found among the candidates."""
    universe = stage.universe
    relevant: dict[str, set[int]] = {}
    for user, item in zip(label_log.users.tolist(), label_log.items.tolist(), strict=True):
        if user in stage.histories and item in universe.item_row:
            relevant.setdefault(user, set()).add(universe.item_row[item])
    groups: list[tuple[F32, F64]] = []
    items: list[Rows] = []
    found = total = 0
    for user in progress.bar(sorted(relevant), "ranker groups"):
        cand = stage.candidates(user, config)
        labels = np.fromiter(
            (r in relevant[user] for r in cand.rows.tolist()), dtype=np.float64, count=len(cand)
        )
        found += int(labels.sum())
        total += len(relevant[user])
        groups.append((stage.features(user, cand, config), labels))
        items.append(cand.rows)
    return groups, items, found / max(1, total)


def ranker_groups(
    universe: Universe, log_to_fit: Log, config: PipelineConfig, progress: Progress
) -> tuple[Groups, dict[str, Any]]:
    """Stage A's training data: the labelled groups of every label slice of `log_to_fit`, pooled."""
    parts: list[tuple[F32, F64]] = []
    items: list[Rows] = []
    recalls: list[float] = []
    slices = config.protocol.slice_count()
    for i, (fit_slice, label_slice) in enumerate(config.protocol.label_slices(log_to_fit, config.seed)):
        progress_slice = Progress(progress.show, f"{progress.prefix}stage A slice {i + 1}/{slices}: ")
        stage = fit_stage(universe, fit_slice, config, config.seed + i, progress_slice)
        with progress_slice.step(f"groups ({len(label_slice)} labels)"):
            groups, group_items, recall = labelled_groups(stage, label_slice, config, progress_slice)
        parts += groups
        items += group_items
        recalls.append(recall)
        for name, seconds in progress_slice.seconds.items():
            progress.seconds[f"stage A {name}"] = round(
                progress.seconds.get(f"stage A {name}", 0.0) + seconds, 3
            )
    info = {
        "label_slices": len(recalls),
        "groups": len(parts),
        "rows": int(sum(len(y) for _, y in parts)),
        "label_recall_in_candidates": round(float(np.mean(recalls)), 6) if recalls else 0.0,
    }
    return Groups.stack(parts, len(config.feature_names), items), info


def fit(data: Dataset, log_to_fit: Log, config: PipelineConfig, progress: Progress | None = None) -> Fitted:
    """Stage A (the ranker, on label slices of `log_to_fit`), then stage B (everything on all of it)."""
    (fitted,) = fit_rankers(data, log_to_fit, [config], progress)
    return fitted


def fit_rankers(
    data: Dataset, log_to_fit: Log, configs: Sequence[PipelineConfig], progress: Progress | None = None
) -> list[Fitted]:
    """`fit` of each of `configs`, which differ only in their ranker settings (`ranker.*`: another
    family, more rounds): stage A's groups and stage B are computed once and shared, so each further
    config costs only its ranker's training. Each Fitted is what `fit` of its config returns; its
    info's "ranker_seconds" is its own ranker's training time. ValueError when the configs differ in
    anything but the ranker."""
    if not configs:
        raise ValueError("fit_rankers: no configs")
    first = configs[0]
    for config in configs:
        config.check()
        if dataclasses.replace(config, ranker=first.ranker) != first:
            raise ValueError("fit_rankers: the configs differ in more than their ranker settings")
    progress = progress or Progress(False)
    universe = Universe.build(data, log_to_fit)
    started = time.perf_counter()
    groups, info = ranker_groups(universe, log_to_fit, first, progress)
    shared = time.perf_counter() - started
    ensembles: list[tuple[Ensemble, float]] = []
    for config in configs:
        r = config.ranker
        shape = (
            f"{r.seeds} x {r.rounds} rounds"
            if r.family == "lightgbm"
            else f"{r.family}, {r.deep_epochs} epochs"
        )
        began = time.perf_counter()
        with progress.step(f"ranker ({shape} on {len(groups.labels)} rows)"):
            ensemble = ranker.train(
                groups, config.feature_names, config.ranker, config.seed, config.threads, universe.n_items
            )
        ensembles.append((ensemble, time.perf_counter() - began))
    began = time.perf_counter()
    with progress.step("stage B"):
        stage = fit_stage(universe, log_to_fit, first, first.seed, Progress(False))
    shared += time.perf_counter() - began
    return [
        Fitted(
            config,
            stage,
            ensemble,
            {**info, "seconds": round(shared + seconds, 3), "ranker_seconds": round(seconds, 3)},
        )
        for config, (ensemble, seconds) in zip(configs, ensembles, strict=True)
    ]
