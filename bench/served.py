"""What the served-quality benchmarks share: train with the CLI on a written train split, start the four
services on the exported version, ask the gateway for every test user's top k, and score that next to
the same artifacts in-process and each source alone."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.artifacts import open_current
from services.common.fusion import generate
from services.common.sources.base import History, exclusion
from services.local import LocalPlatform
from services.retrieval.model import RetrievalModel
from services.served_quality import Answers, from_gateway, in_process
from services.trainer.data import Log
from services.trainer.metrics import mean_metrics
from services.trainer.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
K = 10
METRICS = ("map@10", "ndcg@10", "precision@10", "recall@10")
#: Budgets a loaded machine cannot overrun: these benchmarks measure answers, not speed.
RELAXED = [
    "--total-budget-ms",
    "20000",
    "--features-budget-ms",
    "5000",
    "--retrieval-budget-ms",
    "5000",
    "--ranking-budget-ms",
    "10000",
]


def check_settings(settings: list[str]) -> None:
    """Exit with a line naming a bad `--set` before any data is read or any training starts."""
    try:
        PipelineConfig().with_settings(settings)
    except ValueError as error:
        sys.exit(f"--set: {error}")


def per_seed(
    seeds: list[int], keep: Path | None, run: Callable[[int, Path], dict[str, Any]]
) -> list[dict[str, Any]]:
    """`run(seed, work)` for each seed, each in a fresh work directory (under `keep` when given, to look at
    its split, artifacts and logs afterwards; else in a temporary one)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = keep or Path(tmp)
        for seed in seeds:
            work = base / f"seed-{seed}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            results.append(run(seed, work))
    return results


def recsys_train(data: Path, out: Path, flags: list[str], log: Path) -> float:
    """`recsys train --data DATA --out OUT FLAGS` in a subprocess (exit on failure); its seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "services.cli", "train", "--data", str(data), "--out", str(out), *flags]
    print("  " + " ".join(command[2:]), file=sys.stderr, flush=True)
    with log.open("w") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"recsys train failed; its log: {log}")
    return time.perf_counter() - started


def write_train_split(source: Path, train: Log, test: Log, out: Path) -> None:
    """`train` (of the MovieLens directory `source`) as ratings.csv (input order), with the movies of its
    items and the tags a model fitted on it may see: none on a held-out (user, movie) pair, none on a
    movie it does not know (the trainer itself drops tags made after its last interaction)."""
    out.mkdir(parents=True)
    with (out / "ratings.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for i in train.file_order().tolist():
            writer.writerow(
                [train.users[i], train.items[i], f"{train.ratings[i]:g}", int(train.timestamps[i])]
            )
    items = set(train.items.tolist())
    held = set(zip(test.users.tolist(), test.items.tolist(), strict=True))

    def known(name: str, row: dict[str, str]) -> bool:
        return row["movieId"] in items and (
            name == "movies.csv" or (row["userId"], row["movieId"]) not in held
        )

    for name in ("movies.csv", "tags.csv"):
        with (source / name).open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if known(name, row)]
            fields = reader.fieldnames or []
        with (out / name).open("w", newline="", encoding="utf-8") as f:
            table = csv.DictWriter(f, fieldnames=fields)
            table.writeheader()
            table.writerows(rows)


def unseen_sets(history: Log, test: Log) -> dict[str, set[str]]:
    """Each test user's items they had not interacted with in `history` (all of theirs for a user new in
    `test`)."""
    seen: dict[str, set[str]] = {}
    for user, item in zip(history.users.tolist(), history.items.tolist(), strict=True):
        seen.setdefault(user, set()).add(item)
    out: dict[str, set[str]] = {}
    for user, item in zip(test.users.tolist(), test.items.tolist(), strict=True):
        if item not in seen.get(user, ()):
            out.setdefault(user, set()).add(item)
    return out


def relevant_sets(train: Log, test: Log) -> dict[str, set[str]]:
    """Each test user's held-out items they had not interacted with in train (users of train only)."""
    known = set(train.users.tolist())
    return {user: items for user, items in unseen_sets(train, test).items() if user in known}


def alone(artifacts: Path, users: list[str], relevant: dict[str, set[str]]) -> dict[str, dict[str, float]]:
    """Each source of the served version alone, and the fused order (retrieval without ranking)."""
    version = open_current(artifacts)
    model = RetrievalModel.load(version)
    history_ids = json.loads(version.file("user_history.json").read_text())
    lists: dict[str, dict[str, list[str]]] = {name: {} for name in (*model.sources, "retrieval")}
    for user in users:
        history = History.of(model.rows_of(history_ids.get(user, [])))
        excluded = exclusion(history.as_set)
        for name, source in model.sources.items():
            rows, _ = source.scores(history).top(K, excluded)
            lists[name][user] = model.item_ids[rows].tolist()
        fused = generate(model.sources, history, model.fusion.candidates, model.fusion)
        lists["retrieval"][user] = model.item_ids[fused.rows[:K]].tolist()
    return {name: rounded(mean_metrics(ls, relevant, K)) for name, ls in lists.items()}


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 6) for key, value in metrics.items()}


def wait_compiled(platform: LocalPlatform, timeout_s: float = 900) -> None:
    """The ranker scores with LightGBM until its compiled trees are ready: measure what serves after."""
    deadline = time.monotonic() + timeout_s
    while "ranker compiled" not in (platform.log_dir / "ranking.log").read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError("the ranker was not compiled in time")
        time.sleep(1)


def max_gap(served: Answers, local: Answers, users: list[str]) -> float:
    """The largest score difference between served and in-process answers that list the same items."""
    gaps = [
        abs(a - b)
        for u in users
        if served.items[u] == local.items[u]
        for a, b in zip(served.scores[u], local.scores[u], strict=True)
    ]
    return float(max(gaps, default=0.0))


def serve_and_score(artifacts: Path, relevant: dict[str, set[str]], work: Path) -> dict[str, Any]:
    """The served answers (gateway over gRPC) and the in-process ones on the same artifacts, scored, with
    each source alone and how far served and in-process agree."""
    users = sorted(relevant)
    (work / "experiments.yaml").write_text("experiments: []\n")
    platform = LocalPlatform.on_free_ports(
        artifacts,
        work / "logs",
        event_log=work / "events.jsonl",
        extra_args={"gateway": [*RELAXED, "--experiments", str(work / "experiments.yaml")]},
    )
    with platform:
        wait_compiled(platform)
        served = from_gateway(platform.address("gateway"), users, K)
    local = in_process(artifacts, users, K)
    return {
        "users_scored": len(users),
        "served": served.metrics(relevant, K),
        "in_process": local.metrics(relevant, K),
        "baselines": alone(artifacts, users, relevant),
        "served_vs_in_process": {
            "same_top10": sum(served.items[u] == local.items[u] for u in users),
            "users": len(users),
            "degraded": len(served.degraded),
            "max_score_gap": max_gap(served, local, users),
            "versions": sorted(served.versions),
        },
    }
