"""`recsys train`: flags -> TrainConfig, run the job, print the holdout metrics and the version path.

Every pipeline setting is one `--set NAME=VALUE` away (`recsys train --set ease.lam=500 --set
fusion.candidates=150`; names in services/trainer/pipeline.py); the common ones have flags of their own.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.common.artifacts import ArtifactVersion
from services.common.sources import SOURCE_NAMES
from services.common.sources.base import FitError
from services.trainer.data import BUNDLED_DATA, DataError
from services.trainer.gate import METRICS, GateConfig
from services.trainer.pipeline import PipelineConfig
from services.trainer.protocols import PROTOCOLS
from services.trainer.train import TrainConfig, train


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The pipeline flags `recsys train` and `recsys evaluate` share."""
    defaults = PipelineConfig()
    parser.add_argument(
        "--sources",
        help=f"comma-separated candidate sources (default: {','.join(defaults.sources)}; known: {','.join(SOURCE_NAMES)})",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        help=f"fused candidates per user, trained and served (default {defaults.fusion.candidates})",
    )
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="threads for the fits and LightGBM"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any pipeline setting, e.g. ease.lam=500, fusion.depth=500, ranker.rounds=100, protocol.folds=3",
    )


def pipeline_from_args(ns: argparse.Namespace, protocol: str) -> PipelineConfig:
    """The PipelineConfig the flags ask for; ValueError naming a bad one."""
    config = PipelineConfig().with_setting("protocol.name", protocol).with_setting("threads", str(ns.threads))
    if ns.sources:
        config = config.with_setting("sources", ns.sources)
        fused = [s for s in config.fusion.fused if s in config.sources] or list(config.sources[:1])
        config = config.with_setting("fusion.fused", ",".join(fused))
    if ns.candidates is not None:
        config = config.with_setting("fusion.candidates", str(ns.candidates))
    return config.with_settings(ns.settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        help="a MovieLens directory, a RecBole .inter file, or a CSV/Parquet file user,item[,rating],timestamp"
        " (default: the bundled MovieLens latest-small, unless --events is given)",
    )
    parser.add_argument(
        "--events",
        metavar="SOURCE",
        help="also train on the platform's own events: a Redis URL (the features service's stream) or the "
        "embedded store's JSON-lines log; clicks and ratings become interactions, exposures are left out, "
        "a repeated event id counts once, malformed events are skipped and counted",
    )
    parser.add_argument("--events-prefix", default="recsys", help="the features service's --redis-prefix")
    parser.add_argument(
        "--events-catalogue",
        type=Path,
        metavar="FILE",
        help="with an embedded log: the features service's --catalogue-log, when it is not catalogue.jsonl "
        "beside the log",
    )
    parser.add_argument(
        "--click-rating", type=float, default=4.0, help="the rating a click stands for (clicks carry none)"
    )
    parser.add_argument(
        "--full-events",
        action="store_true",
        help="read the whole event log and the base file, even when CURRENT was trained from an earlier read "
        "(default: CURRENT's interactions plus the events after its watermark)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts"), help="artifact root (default: artifacts)"
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="promote the new version to CURRENT unless, on the newest held-out interactions, it is "
        "confidently worse than the serving version (both scored through the services' handlers; the 95%% "
        "interval of the per-user difference below -tolerance); otherwise keep it unpromoted with the reason "
        "in its manifest",
    )
    parser.add_argument(
        "--gate-tolerance",
        type=float,
        default=GateConfig.tolerance,
        help=f"how far below the serving version's metric the new one may be (default {GateConfig.tolerance})",
    )
    parser.add_argument(
        "--gate-metric", choices=METRICS, default=GateConfig.metric, help="the metric the gate compares"
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=None,
        help="after publishing, delete all but the newest N versions (never CURRENT, PINNED or the "
        "rollback target)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="leave-last",
        help="how the holdout of the metrics and the ranker's label slices are cut (default leave-last: each "
        "user's latest --leave-n; stratified: each item's rows at random, as the published ML-100k protocol)",
    )
    parser.add_argument("--leave-n", type=int, default=1, help="leave-last: interactions held out per user")
    parser.add_argument("--seed", type=int, default=42, help="random seed (splits, fits, LightGBM)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines or bars")
    add_pipeline_arguments(parser)


def config_from_args(ns: argparse.Namespace, *, gate: bool = False) -> TrainConfig:
    """The TrainConfig the flags ask for (`gate`: on whatever --gate says); ValueError naming a bad one."""
    pipeline = pipeline_from_args(ns, ns.protocol).with_setting("protocol.leave_n", str(ns.leave_n))
    pipeline = pipeline.with_setting("seed", str(ns.seed))
    pipeline.check()
    data = ns.data if ns.data is not None else (None if ns.events else BUNDLED_DATA)
    gated = GateConfig(ns.gate_tolerance, ns.gate_metric) if gate or ns.gate else None
    if gated is not None:
        gated.check()
    return TrainConfig(
        data,
        Path(ns.out),
        pipeline,
        progress=not ns.no_progress,
        events=ns.events,
        events_prefix=ns.events_prefix,
        events_catalogue=ns.events_catalogue,
        click_rating=ns.click_rating,
        full_events=ns.full_events,
        gate=gated,
        keep=ns.keep,
    )


def main(ns: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        version = train(config_from_args(ns))
    except (ValueError, DataError, FitError) as e:
        print(f"recsys train: {e}", file=sys.stderr)
        return 2
    report(version)
    return 0


def report(version: ArtifactVersion) -> None:
    """What `recsys train` prints about the version it published."""
    pipeline = version.manifest["pipeline"]
    metrics = version.manifest["metrics"]
    print(f"trained {version.version} in {version.manifest['training']['seconds']:.1f} s")
    print(
        f"  holdout ({metrics['protocol']}): {metrics['users']} users scored, "
        f"{metrics['held_out']['interactions']} interactions held out"
    )
    print(f"  {'':16}{'MAP@10':>9}{'nDCG@10':>9}{'P@10':>9}{'R@10':>9}")
    rows = [("pipeline", "pipeline"), ("retrieval", "retrieval"), *((s, s) for s in pipeline["sources"])]
    for name, label in rows:
        m = metrics["accuracy"][name]
        print(
            f"  {label:16}{m['map@10']:>9.4f}{m['ndcg@10']:>9.4f}{m['precision@10']:>9.4f}{m['recall@10']:>9.4f}"
        )
    for key, value in metrics["candidates"].items():
        print(f"  candidate {key}: {value:.4f}")
    print(
        f"  exported: fitted again on all {version.manifest['training']['final_fit']['interactions']} interactions"
    )
    read = version.manifest["data"].get("events")
    if read is not None:
        c = read["counts"]
        after = f" after {read['since']} (on {read['earlier']}'s interactions)" if read.get("since") else ""
        print(
            f"  events from {read['source']}{after} through {read['watermark'] or '(none)'}: {c.get('read', 0)} read, "
            f"{c.get('interactions', 0)} new interactions, {c.get('shown_not_chosen', 0)} shown not chosen, "
            f"{c.get('exposures', 0)} exposures left out, {c.get('duplicates', 0)} duplicates, "
            f"{c.get('malformed', 0)} malformed{': ' + read['malformed'][0] if read['malformed'] else ''}"
        )
    verdict = version.manifest.get("gate")
    if verdict is not None:
        print(f"  gate: {verdict['reason']}")
    print(f"version: {version.path}{'' if verdict is None or verdict['passed'] else ' (not promoted)'}")
