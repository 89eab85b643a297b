"""`recsys monitor drift`: PSI of the features a ranking service scored, against the version's training
reference and against the previous window; exit 1 on drift (PSI above the threshold), so a CronJob or
the retraining loop can act on it.

The counts come from a running ranking service (`GetFeatureStats`), from its exported metrics (a
Prometheus scrape of `recsys.ranking.feature_rows`: the rows counted since the version was loaded,
judged against the reference in the version's manifest; no previous window), or from a file an earlier
run saved (`--save`, then `--from`): the same JSON in every case. A report directory gets drift.json and drift.png
(reference against live shares for each flagged feature, or the six largest PSIs when none is).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import ConfigError
from services.common.drift import THRESHOLD, Histogram, psi
from services.common.tls import ClientTLS, add_client_arguments, channel, client_from_args


class DriftError(Exception):
    """A one-line failure: unreachable service, unreadable file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="monitor_command", required=True)
    drift = sub.add_parser("drift", help="PSI per feature against the training reference; exit 1 on drift")
    source = drift.add_mutually_exclusive_group()
    source.add_argument("--ranking", default="127.0.0.1:50054", help="ranking service HOST:PORT")
    source.add_argument("--from", dest="from_file", type=Path, default=None, help="counts saved by --save")
    source.add_argument(
        "--metrics-url",
        default=None,
        help="a ranking replica's Prometheus endpoint, e.g. http://host:9464/metrics (needs --artifacts-dir)",
    )
    drift.add_argument(
        "--artifacts-dir",
        type=Path,
        default=None,
        help="with --metrics-url: where the versions' manifests are",
    )
    drift.add_argument("--artifact-version", default="", help="a served version (default: CURRENT)")
    drift.add_argument("--threshold", type=float, default=THRESHOLD, help="PSI above this is drift")
    drift.add_argument(
        "--min-rows", type=int, default=200, help="fewer counted rows than this: nothing is judged"
    )
    drift.add_argument("--save", type=Path, default=None, help="write the counts as JSON here")
    drift.add_argument("--report", type=Path, default=None, help="directory for drift.json and drift.png")
    # a ranking service with mutual TLS wants a client certificate: `recsys certs make` writes client.crt
    add_client_arguments(drift, "the ranking service")


# --- the counts -----------------------------------------------------------------------------------


def stats_to_json(response: Any) -> dict[str, Any]:
    """A GetFeatureStatsResponse as the JSON `--save` writes."""

    def histograms(items: Any) -> dict[str, Any]:
        return {h.name: Histogram(tuple(h.edges), tuple(h.counts), h.missing).to_json() for h in items}

    def window(w: Any) -> dict[str, Any]:
        return {
            "start_ms": w.start_ms,
            "end_ms": w.end_ms,
            "rows": w.rows,
            "features": histograms(w.features),
        }

    return {
        "artifact_version": response.artifact_version,
        "reference": histograms(response.reference),
        "current": window(response.current),
        "previous": window(response.previous) if response.HasField("previous") else None,
    }


def fetch(address: str, version: str, tls: ClientTLS | None = None) -> dict[str, Any]:
    import grpc

    from recsys.v1 import ranking_pb2, ranking_pb2_grpc

    with channel(address, tls) as ch:
        stub = ranking_pb2_grpc.RankingServiceStub(ch)
        try:
            reply = stub.GetFeatureStats(
                ranking_pb2.GetFeatureStatsRequest(artifact_version=version), timeout=10
            )
        except grpc.RpcError as e:
            raise DriftError(f"{address}: {e.code().name}: {e.details()}") from e
    return stats_to_json(reply)


_SAMPLE = re.compile(r"^recsys_ranking_feature_rows(?:_total)?\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str, artifacts: Path | None, version: str) -> dict[str, Any]:
    """The counts a Prometheus endpoint exports for `version` (default: the one CURRENT names), with
    the reference from that version's manifest."""
    import urllib.error
    import urllib.request

    from services.common.artifacts import ArtifactError, open_current, open_version

    if artifacts is None:
        raise DriftError("--metrics-url needs --artifacts-dir (the reference is in the version's manifest)")
    try:
        served = open_version(artifacts, version) if version else open_current(artifacts)
    except (ArtifactError, OSError) as e:
        raise DriftError(f"--artifacts-dir {artifacts}: {e}") from e
    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DriftError(f"--metrics-url {url}: {e}") from e
    counts: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found:
            labels = dict(_LABEL.findall(found["labels"]))
            if labels.get("version") == served.version:
                counts.setdefault(labels["feature"], {})[labels["bin"]] = float(found["value"])
    reference = (served.manifest.get("features") or {}).get("reference", {}).get("ranker", {})
    features = {}
    for name, raw in reference.items():
        bins = counts.get(name, {})
        edges = raw["edges"]
        features[name] = Histogram(
            tuple(edges),
            tuple(int(bins.get(str(i), 0)) for i in range(len(edges) + 1)),
            int(bins.get("missing", 0)),
        ).to_json()
    rows = max((sum(h["counts"]) + h["missing"] for h in features.values()), default=0)
    window = {"start_ms": 0, "end_ms": 0, "rows": rows, "features": features}
    return {"artifact_version": served.version, "reference": reference, "current": window, "previous": None}


def read(path: Path) -> dict[str, Any]:
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DriftError(f"--from {path}: not a saved drift file ({e})") from e
    missing = [
        k
        for k in ("artifact_version", "reference", "current")
        if not isinstance(stats, dict) or k not in stats
    ]
    if missing:
        raise DriftError(f"--from {path}: not a saved drift file (no {', '.join(missing)})")
    return dict(stats)


# --- PSI ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    feature: str
    vs_reference: float  # NaN: not enough rows
    vs_previous: float  # NaN: no previous window with enough rows
    flagged: bool


def judge(stats: dict[str, Any], threshold: float, min_rows: int) -> list[Row]:
    reference = {k: Histogram.from_json(v) for k, v in stats["reference"].items()}
    current = stats["current"]
    previous = stats.get("previous")
    live = {k: Histogram.from_json(v) for k, v in current["features"].items()}
    before = (
        {k: Histogram.from_json(v) for k, v in previous["features"].items()}
        if previous and previous["rows"] >= min_rows
        else {}
    )
    enough = current["rows"] >= min_rows
    rows = []
    for name, ref in reference.items():
        now = live.get(name)
        vs_ref = psi(ref, now) if enough and now is not None else math.nan
        vs_prev = psi(before[name], now) if enough and now is not None and name in before else math.nan
        flagged = any(v > threshold for v in (vs_ref, vs_prev) if math.isfinite(v))
        rows.append(Row(name, vs_ref, vs_prev, flagged))
    return sorted(rows, key=lambda r: -(r.vs_reference if math.isfinite(r.vs_reference) else -1.0))


def format_rows(rows: list[Row], threshold: float) -> str:
    def cell(v: float, width: int) -> str:
        return f"{v:>{width}.4f}" if math.isfinite(v) else f"{'-':>{width}}"

    lines = [f"{'feature':<34} {'PSI vs ref':>10} {'vs prev':>8}  drift (> {threshold:g})"]
    for r in rows:
        lines.append(
            f"{r.feature:<34} {cell(r.vs_reference, 10)} {cell(r.vs_previous, 8)}  {'DRIFT' if r.flagged else ''}"
        )
    return "\n".join(lines)


def plot(stats: dict[str, Any], rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.flagged] or rows[:6]
    shown = shown[:12]
    cols = min(3, max(1, len(shown)))
    lines = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 3.2 * lines), squeeze=False)
    for ax in axes.reshape(-1)[len(shown) :]:
        ax.axis("off")
    for ax, r in zip(axes.reshape(-1), shown, strict=False):
        ref = Histogram.from_json(stats["reference"][r.feature]).shares()
        live = Histogram.from_json(stats["current"]["features"][r.feature]).shares()
        x = range(len(ref))
        ax.bar([i - 0.2 for i in x], ref, width=0.4, label="reference")
        ax.bar([i + 0.2 for i in x], live, width=0.4, label="live")
        ax.set_xticks(list(x), [*(str(i) for i in range(len(ref) - 1)), "NaN"], fontsize=7)
        ax.set_title(f"{r.feature}\nPSI {r.vs_reference:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"feature drift, version {stats['artifact_version']} (bins: reference deciles)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    try:
        if args.from_file:
            stats = read(args.from_file)
        elif args.metrics_url:
            stats = scrape(args.metrics_url, args.artifacts_dir, args.artifact_version)
        else:
            stats = fetch(args.ranking, args.artifact_version, client_from_args(args))
    except (DriftError, ConfigError) as e:
        print(f"recsys monitor drift: {e}", file=sys.stderr)
        return 2
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(stats) + "\n")
    version, counted = stats["artifact_version"], stats["current"]["rows"]
    if not stats["reference"]:
        print(f"version {version}: no reference histograms (trained before they were written): not judged")
        return 0
    rows = judge(stats, args.threshold, args.min_rows)
    print(f"version {version}: {counted} rows counted in the current window")
    if counted < args.min_rows:
        print(f"fewer than --min-rows {args.min_rows}: not judged")
        return 0
    print(format_rows(rows, args.threshold))
    flagged = [r.feature for r in rows if r.flagged]
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        table = [
            {
                "feature": r.feature,
                "psi_vs_reference": r.vs_reference if math.isfinite(r.vs_reference) else None,
                "psi_vs_previous": r.vs_previous if math.isfinite(r.vs_previous) else None,
                "flagged": r.flagged,
            }
            for r in rows
        ]
        report = {"threshold": args.threshold, "flagged": flagged, "table": table, "stats": stats}
        (args.report / "drift.json").write_text(json.dumps(report) + "\n")
        plot(stats, rows, args.report / "drift.png")
    if flagged:
        print(
            f"drift: {len(flagged)} features over PSI {args.threshold:g}: {', '.join(flagged)}",
            file=sys.stderr,
        )
        return 1
    return 0
