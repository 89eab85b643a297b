"""`recsys demo`: train on the bundled data when there are no artifacts, start the four services, show
recommendations for a few users (titles, experiment arm, per-stage milliseconds), show feedback taking
effect, measure latency over sequential requests, and shut everything down."""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys.v1 import common_pb2, gateway_pb2
from services.client import Client, event
from services.common.artifacts import ArtifactError, current_version_name, open_current
from services.local import LocalPlatform

COLD_USER = "demo-new-user"


def load_titles(artifacts_dir: Path) -> dict[str, str]:
    """item id -> title from the served version's items.csv ({} when there is none)."""
    try:
        path = artifacts_dir / current_version_name(artifacts_dir) / "items.csv"
    except ArtifactError:
        return {}
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["item_id"]: row["title"] for row in csv.DictReader(f)}


def format_response(response: gateway_pb2.RecommendResponse, titles: dict[str, str]) -> str:
    arms = ", ".join(f"{a.experiment}={a.arm}" for a in response.assignments) or "-"
    lines = [f"  arm: {arms}   version: {response.artifact_version}   trace: {response.trace_id or '-'}"]
    if response.degraded:
        lines.append(f"  DEGRADED: {'; '.join(response.degraded_reasons)}")
    if response.timings:
        lines.append("  ms: " + "  ".join(f"{t.stage}={t.ms:.1f}" for t in response.timings))
    explained = {e.item_id: e for e in response.explanations}
    for rank, item in enumerate(response.items, 1):
        title = titles.get(item.item_id, "")
        lines.append(f"  {rank:>2}. {item.score:8.4f}  [{item.source:<7}] {item.item_id:>7}  {title}")
        why = explained.get(item.item_id)
        if why is not None:
            lines.append("      " + format_explanation(why))
    return "\n".join(lines)


def format_explanation(why: common_pb2.Explanation, top: int = 4) -> str:
    """One line: the sources that listed the item and its largest feature contributions."""
    sources = ",".join(why.sources) or "-"
    if why.unavailable:
        return f"listed by {sources}; no contributions: {why.unavailable}"
    parts = "  ".join(f"{c.feature}={c.value:.3g} ({c.contribution:+.3f})" for c in why.contributions[:top])
    return f"listed by {sources}; ranker {why.ranker_score:+.3f} = base {why.base:+.3f} + ... {parts}"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure_latency(client: Client, users: Sequence[str], requests: int, k: int = 10) -> dict[str, Any]:
    """Sequential Recommend calls (debug on): client-side total and the gateway's per-stage times, in ms."""
    stages: dict[str, list[float]] = defaultdict(list)
    degraded = 0
    for i in range(requests):
        start = time.perf_counter()
        response = client.recommend(users[i % len(users)], k=k, debug=True)
        stages["client_total"].append((time.perf_counter() - start) * 1000)
        degraded += response.degraded
        for t in response.timings:
            stages[t.stage].append(t.ms)
    return {
        "requests": requests,
        "degraded": degraded,
        "stages_ms": {
            name: {
                "p50": percentile(v, 50),
                "p99": percentile(v, 99),
                "mean": statistics.fmean(v),
                "max": max(v),
            }
            for name, v in stages.items()
        },
    }


def format_latency(result: dict[str, Any]) -> str:
    lines = [f"  {'stage':<14}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
    for name, s in result["stages_ms"].items():
        lines.append(f"  {name:<14}{s['p50']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}")
    lines.append(f"  {result['requests']} requests, {result['degraded']} degraded")
    return "\n".join(lines)


def demo_users(artifacts_dir: Path, count: int) -> list[str]:
    version = open_current(artifacts_dir)
    user_ids: list[str] = json.loads(version.file("user_ids.json").read_text())
    return user_ids[:count]


def run(artifacts_dir: Path, work_dir: Path, redis_url: str | None, users: int, requests: int) -> int:
    if not (artifacts_dir / "CURRENT").exists():
        from services.trainer.data import BUNDLED_DATA
        from services.trainer.train import TrainConfig, train

        print(
            f"No artifacts in {artifacts_dir}: training on the bundled MovieLens latest-small first "
            "(the whole pipeline, fitted twice: a few minutes on 2 cores)."
        )
        metrics = train(TrainConfig(data=BUNDLED_DATA, out=artifacts_dir)).manifest["metrics"]
        print(f"  on each user's latest interaction, held out ({metrics['users']} users):")
        for name, label in (
            ("pipeline", "served pipeline"),
            ("ease", "EASE alone"),
            ("popular", "popularity"),
        ):
            values = metrics["accuracy"][name]
            print(f"  {label:<16}" + "  ".join(f"{m}={values[m]:.4f}" for m in ("ndcg@10", "recall@10")))
    titles = load_titles(artifacts_dir)
    warm = demo_users(artifacts_dir, users)
    platform = LocalPlatform.on_free_ports(
        artifacts_dir, work_dir / "logs", redis_url=redis_url, event_log=work_dir / "events.jsonl"
    )
    print(f"Starting features, retrieval, ranking, gateway (logs in {platform.log_dir}) ...")
    with platform, Client(platform.address("gateway")) as client:
        print(f"All four services SERVING; gateway at {platform.address('gateway')}\n")
        for user in [*warm, COLD_USER]:
            kind = "cold-start user" if user == COLD_USER else "user"
            print(f"Top 10 for {kind} {user}:")
            print(format_response(client.recommend(user, k=10, debug=True), titles), "\n")

        user = warm[0]
        first = client.recommend(user, k=10).items[0]
        client.feedback([event(user, first.item_id, "click")])
        again = [i.item_id for i in client.recommend(user, k=10).items]
        gone = "and it is gone from the next response" if first.item_id not in again else "BUT IT CAME BACK"
        print(f"User {user} clicks {first.item_id} ({titles.get(first.item_id, '')}) {gone}.\n")

        print(f"Latency over {requests} sequential Recommend calls (k=10, debug on):")
        print(format_latency(measure_latency(client, [*warm, COLD_USER], requests)))
    print("\nAll services stopped.")
    return 0
