"""The learning loop's commands: `recsys versions [prune --keep N]`, `recsys promote VERSION`,
`recsys rollback`, and `recsys retrain --every DURATION` (the gated `recsys train` in a loop).

Running services pick up a new CURRENT by themselves (ArtifactWatcher), so none of these talks to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from services.common import artifacts
from services.common.artifacts import ArtifactError
from services.common.sources.base import FitError
from services.trainer.cli import add_arguments as add_train_arguments
from services.trainer.cli import config_from_args, report
from services.trainer.data import DataError
from services.trainer.train import NothingNew, train

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in "10s", "30m", "1h30m", "1d"; ValueError naming the text otherwise."""
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"--every {text!r}: expected a duration such as 10s, 30m, 1h30m or 1d")
    seconds = sum(float(n) * UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"--every {text!r}: must be longer than zero")
    return seconds


def _artifacts_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts-dir", type=Path, default=Path("artifacts"), help="artifact root (default: artifacts)"
    )


def add_versions_arguments(parser: argparse.ArgumentParser) -> None:
    _artifacts_dir(parser)
    sub = parser.add_subparsers(dest="versions_command")
    prune = sub.add_parser(
        "prune", help="delete all but the newest N versions (never CURRENT, PINNED or the rollback target)"
    )
    prune.add_argument("--keep", type=int, required=True, help="newest versions to keep")
    _artifacts_dir(prune)


def add_promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="the version to serve (verified first)")
    _artifacts_dir(parser)


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    _artifacts_dir(parser)


def add_retrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--every", required=True, metavar="DURATION", help="time between round starts: 10s, 30m, 1h30m, 1d"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="stop after this many rounds (default: never)"
    )
    add_train_arguments(parser)


def _state(root: Path, name: str, manifest: dict[str, Any] | None, current: str | None) -> str:
    if manifest is None:
        return "unreadable"
    if name == current:
        return "CURRENT"
    if name in artifacts.pinned_version_names(root):
        return "PINNED"
    gate = manifest.get("gate")
    if gate is not None and not gate.get("passed"):
        return "refused-by-gate"
    if name in artifacts.history(root):
        return "previous"
    return "unpromoted"


def _manifest(root: Path, name: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads((root / name / artifacts.MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def versions_table(root: Path) -> list[dict[str, Any]]:
    """One row per version, oldest first: what `recsys versions` prints."""
    try:
        current: str | None = artifacts.current_version_name(root)
    except ArtifactError:
        current = None
    rows = []
    for name in artifacts.version_names(root):
        manifest = _manifest(root, name)
        m = manifest or {}
        pipeline = m.get("metrics", {}).get("accuracy", {}).get("pipeline", {})
        gate = m.get("gate") or {}
        rows.append(
            {
                "version": name,
                "created": str(m.get("created_at", ""))[:19],
                "state": _state(root, name, manifest, current),
                "ndcg@10": pipeline.get("ndcg@10"),
                "map@10": pipeline.get("map@10"),
                "watermark": (m.get("data", {}).get("events") or {}).get("watermark", ""),
                "gate": gate.get("reason", ""),
            }
        )
    return rows


def cmd_versions(ns: argparse.Namespace) -> int:
    root: Path = ns.artifacts_dir
    if not root.is_dir():
        raise ArtifactError(f"artifacts directory {root} does not exist")
    if ns.versions_command == "prune":
        deleted = artifacts.prune(root, ns.keep)
        print(f"deleted {len(deleted)} versions{': ' + ', '.join(deleted) if deleted else ''}")
        return 0
    rows = versions_table(root)
    if not rows:
        print(f"no versions in {root}")
        return 0

    def number(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    print(
        f"{'VERSION':<26} {'CREATED':<19} {'STATE':<15} {'NDCG@10':>8} {'MAP@10':>8} {'WATERMARK':<16} GATE"
    )
    for r in rows:
        print(
            f"{r['version']:<26} {r['created']:<19} {r['state']:<15} {number(r['ndcg@10']):>8} "
            f"{number(r['map@10']):>8} {r['watermark'] or '-':<16} {r['gate'] or '-'}"
        )
    return 0


def cmd_promote(ns: argparse.Namespace) -> int:
    root: Path = ns.artifacts_dir
    if ns.version not in artifacts.version_names(root):
        raise ArtifactError(f"no version {ns.version!r} in {root}")
    artifacts.open_version(root, ns.version)  # every checksum, before anything serves it
    artifacts.promote_version(root, ns.version)
    print(f"CURRENT: {ns.version}")
    return 0


def cmd_rollback(ns: argparse.Namespace) -> int:
    before, after = artifacts.rollback(ns.artifacts_dir)
    print(f"CURRENT: {after} (was {before})")
    return 0


def cmd_retrain(ns: argparse.Namespace) -> int:
    """Rounds of the gated train, one every --every; a round that fails is reported and the next one runs."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    every = parse_duration(ns.every)
    if ns.rounds is not None and ns.rounds < 1:
        raise ValueError(f"--rounds {ns.rounds}: expected at least 1")
    config = config_from_args(ns, gate=True)
    if config.events is not None:
        config = dataclasses.replace(config, require_new_events=True)
    failed = 0
    round_ = 0
    while ns.rounds is None or round_ < ns.rounds:
        round_ += 1
        started = time.monotonic()
        print(f"retrain round {round_}", flush=True)
        try:
            version = train(config)
        except NothingNew as e:
            print(f"retrain round {round_}: nothing to learn: {e}", flush=True)
        except (ValueError, DataError, FitError, ArtifactError) as e:
            failed += 1
            print(f"retrain round {round_}: failed: {e}", file=sys.stderr, flush=True)
        else:
            report(version)
            promoted = version.manifest.get("gate", {}).get("passed", True)
            print(
                f"retrain round {round_}: {version.version} {'promoted' if promoted else 'not promoted'}",
                flush=True,
            )
        if ns.rounds is not None and round_ >= ns.rounds:
            break
        time.sleep(max(0.0, every - (time.monotonic() - started)))
    return 1 if failed else 0
