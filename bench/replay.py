"""The learning loop, replayed: MovieLens latest-small in time order. `recsys train` on the first 80% of
the ratings (the movies and tags known by then), the four services up on it, then the next 10% sent
through the gateway as live feedback, in time order, each movie that was not in the first 80% upserted
through the gateway (title, genres, year, the tags given to it so far) just before its first rating.
Then `recsys train --events` on the platform's own event log and live catalogue, through the quality
gate, and the services pick the new version up. The last 10% scores what the gateway serves:

* frozen, before the replay: the first version, as it served before any feedback;
* frozen, after the replay: the same version with the replay as live feedback (recent items, exclusions)
  and the new movies in the live catalogue (content scores and exploration slots only);
* retrained: the version trained from the event log, with the same live state.

The users scored are the last 10%'s users with a history before it (in the first 90%); their relevant
items are their last-10% items they had not rated before. The paired per-user difference over them gives the
retrained-minus-frozen nDCG@10 interval; "new items" are the movies first rated in the replayed 10%.
`all_users` adds the last 10%'s newcomers (no history: the cold path serves them). The gate's verdict on
its own slice is reported; a refused version is promoted by hand so that it is measured all the same.

    .venv/bin/python bench/replay.py [--set NAME=VALUE ...] [--keep DIR]

Writes bench/results/replay.json and replay.png and prints a table.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import json
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.served import (  # noqa: E402
    RELAXED,
    check_settings,
    recsys_train,
    relevant_sets,
    unseen_sets,
    wait_compiled,
    write_train_split,
)
from services.client import Client, event  # noqa: E402
from services.common.artifacts import current_version_name, promote_version  # noqa: E402
from services.common.catalogue import CatalogueItem  # noqa: E402
from services.experiment.analysis import mean_estimate  # noqa: E402
from services.local import LocalPlatform  # noqa: E402
from services.served_quality import Answers, from_gateway  # noqa: E402
from services.trainer.data import BUNDLED_DATA, Log, load  # noqa: E402
from services.trainer.metrics import per_user_metrics  # noqa: E402

K = 10
SHARES = (0.8, 0.9)  # train | replay | score
#: Events per Feedback call (each call is one durable write of the features store).
FEEDBACK_BATCH = 500
STATES = ("frozen_before_replay", "frozen_after_replay", "retrained")
LABELS = {
    "frozen_before_replay": "frozen, before replay",
    "frozen_after_replay": "frozen, after replay",
    "retrained": "retrained from events",
}
YEAR = re.compile(r"\((\d{4})\)\s*$")


def time_slices(log: Log) -> tuple[Log, Log, Log]:
    order = np.argsort(log.timestamps, kind="stable")
    a, b = (int(len(order) * s) for s in SHARES)
    return log.take(order[:a]), log.take(order[a:b]), log.take(order[b:])


def joined(a: Log, b: Log) -> Log:
    return Log(
        np.concatenate([a.users, b.users]),
        np.concatenate([a.items, b.items]),
        np.concatenate([a.ratings, b.ratings]),
        np.concatenate([a.timestamps, b.timestamps]),
    )


def movies(source: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    with (source / "movies.csv").open(newline="", encoding="utf-8") as f:
        return {
            row["movieId"]: (
                row["title"],
                tuple(g for g in row["genres"].split("|") if g != "(no genres listed)"),
            )
            for row in csv.DictReader(f)
        }


def tags_by_movie(source: Path) -> dict[str, list[tuple[float, str]]]:
    out: dict[str, list[tuple[float, str]]] = {}
    with (source / "tags.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["movieId"], []).append((float(row["timestamp"]), row["tag"]))
    return out


def catalogue_item(
    movie: str, when: float, meta: Mapping[str, tuple[str, tuple[str, ...]]], tags: Mapping[str, Any]
) -> CatalogueItem:
    """The movie as a catalogue would describe it when it first appears: title, genres, the year in its
    title as the publish time, the tags users had given it by then."""
    title, genres = meta.get(movie, ("", ()))
    year = YEAR.search(title)
    published = calendar.timegm((int(year.group(1)), 1, 1, 0, 0, 0)) * 1000 if year else 0
    given = sorted({t for ts, t in tags.get(movie, ()) if ts <= when})[:64]
    return CatalogueItem(movie, title, genres, tuple(given), max(published, 0))


def replay(address: str, replayed: Log, known: set[str], source: Path) -> dict[str, Any]:
    """`replayed` as rating events through the gateway in time order, each unknown movie upserted just
    before the batch holding its first rating."""
    meta, tags = movies(source), tags_by_movie(source)
    seen = set(known)
    counts: dict[str, Any] = {"events": 0, "feedback_calls": 0, "upserted": 0, "upsert_calls": 0}
    started = time.perf_counter()
    with Client(address, timeout_s=60.0) as client:
        for start in range(0, len(replayed), FEEDBACK_BATCH):
            rows = range(start, min(start + FEEDBACK_BATCH, len(replayed)))
            fresh: dict[str, CatalogueItem] = {}
            for i in rows:
                movie = str(replayed.items[i])
                if movie not in seen and movie not in fresh:
                    fresh[movie] = catalogue_item(movie, float(replayed.timestamps[i]), meta, tags)
            if fresh:
                client.upsert_items(item.to_proto() for item in fresh.values())
                seen |= fresh.keys()
                counts["upserted"] += len(fresh)
                counts["upsert_calls"] += 1
            batch = [rating_event(replayed, i) for i in rows]
            counts["events"] += client.feedback(batch)
            counts["feedback_calls"] += 1
    counts["seconds"] = round(time.perf_counter() - started, 1)
    return counts


def rating_event(log: Log, i: int) -> Any:
    e = event(str(log.users[i]), str(log.items[i]), "rating", float(log.ratings[i]), event_id=f"replay-{i}")
    e.timestamp_ms = int(log.timestamps[i] * 1000)
    return e


def newest_version(root: Path) -> str:
    return max(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def serve(address: str, users: Sequence[str], expect_version: str | None = None) -> Answers:
    """Every user's top K from the gateway; with `expect_version`, first wait until it serves that."""
    if expect_version is not None:
        deadline = time.monotonic() + 300
        while from_gateway(address, users[:1], K).versions != {expect_version}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the services did not load {expect_version}")
            time.sleep(1)
    return from_gateway(address, users, K)


def state(answers: Answers, relevant: Mapping[str, set[str]], new_items: set[str]) -> dict[str, Any]:
    slots = [item for user in relevant for item in answers.items[user]]
    new = [item for item in slots if item in new_items]
    return {
        **answers.metrics(relevant, K),
        "new_item_share": round(len(new) / max(1, len(slots)), 4),
        "new_items_distinct": len(set(new)),
        "users_with_a_new_item": sum(any(i in new_items for i in answers.items[u]) for u in relevant),
        "degraded": len(answers.degraded),
        "versions": sorted(answers.versions),
    }


def per_user_ndcg(answers: Answers, relevant: Mapping[str, set[str]]) -> np.ndarray:
    """nDCG@K per user of `relevant`, in its order (the same users in the same order for every state)."""
    rankings = {user: answers.items[user] for user in relevant}
    return per_user_metrics(rankings, relevant, K)[1][f"ndcg@{K}"]


def paired_difference(after: np.ndarray, before: np.ndarray) -> dict[str, Any]:
    """The mean per-user difference and its 95% interval (normal, as the quality gate and the experiment
    analysis compute it: services.experiment.analysis.mean_estimate)."""
    diff = after - before
    estimate = mean_estimate(diff)
    low, high = estimate.ci()
    return {
        "mean": round(estimate.value, 6),
        "ci95": [round(low, 6), round(high, 6)],
        "users_better": int((diff > 0).sum()),
        "users_worse": int((diff < 0).sum()),
    }


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = result["states"]
    fig, (quality, fresh) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(STATES))
    for j, metric in enumerate((f"ndcg@{K}", f"recall@{K}")):
        quality.bar(x + (j - 0.5) * 0.38, [states[s][metric] for s in STATES], 0.38, label=metric)
    quality.set_xticks(x, [LABELS[s] for s in STATES], fontsize=8)
    quality.set_title(f"served quality on the last 10% ({result['users_scored']} users)")
    quality.legend()
    fresh.bar(x, [100 * states[s]["new_item_share"] for s in STATES], 0.5, color="tab:green")
    fresh.set_xticks(x, [LABELS[s] for s in STATES], fontsize=8)
    fresh.set_ylabel("% of recommended slots")
    fresh.set_title(f"movies first rated in the replay ({result['replay']['upserted']} upserted)")
    fig.suptitle(
        "MovieLens latest-small replayed through the gateway: frozen vs retrained from the event log"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run(settings: list[str], work: Path) -> dict[str, Any]:
    data = load(BUNDLED_DATA)
    train, replayed, scored = time_slices(data.log)
    base, artifacts = work / "train-80", work / "artifacts"
    write_train_split(BUNDLED_DATA, train, joined(replayed, scored), base)
    flags = [a for s in settings for a in ("--set", s)]
    print("train on the first 80%:", file=sys.stderr, flush=True)
    first_seconds = recsys_train(base, artifacts, flags, work / "train.log")
    first = current_version_name(artifacts)

    history = joined(train, replayed)
    everyone = unseen_sets(history, scored)
    relevant = relevant_sets(history, scored)
    users = sorted(relevant)
    cohort = sorted(everyone)
    new_items = set(replayed.items.tolist()) - set(train.items.tolist())
    (work / "experiments.yaml").write_text("experiments: []\n")
    platform = LocalPlatform.on_free_ports(
        artifacts,
        work / "logs",
        event_log=work / "events.jsonl",
        extra_args={"gateway": [*RELAXED, "--experiments", str(work / "experiments.yaml")]},
    )
    answers: dict[str, Answers] = {}
    with platform:
        wait_compiled(platform)
        gateway = platform.address("gateway")
        answers["frozen_before_replay"] = serve(gateway, cohort)
        print(f"replay {len(replayed)} ratings through the gateway:", file=sys.stderr, flush=True)
        replayed_counts = replay(gateway, replayed, set(train.items.tolist()), BUNDLED_DATA)
        answers["frozen_after_replay"] = serve(gateway, cohort)
        print("retrain from the event log (gated):", file=sys.stderr, flush=True)
        gated = ["--events", str(work / "events.jsonl"), "--gate"]
        retrain_seconds = recsys_train(base, artifacts, [*gated, *flags], work / "retrain.log")
        second = newest_version(artifacts)
        manifest = json.loads((artifacts / second / "manifest.json").read_text())
        if not manifest["gate"]["passed"]:
            # Measured anyway: the gate's verdict on its own slice is a result of this benchmark too.
            print(f"  the gate refused {second}; promoted by hand to score it", file=sys.stderr, flush=True)
            promote_version(artifacts, second)
        answers["retrained"] = serve(gateway, cohort, expect_version=second)
    ndcg = {s: per_user_ndcg(answers[s], relevant) for s in STATES}
    return {
        "benchmark": "replay (MovieLens latest-small in time order, served through the gateway)",
        "protocol": "time order: train on the first 80%, replay 10% as feedback + upserts, score the last 10%",
        "settings": settings,
        "sizes": {"train": len(train), "replay": len(replayed), "scored": len(scored)},
        "users_scored": len(users),
        "new_items": len(new_items),
        "versions": {"frozen": first, "retrained": second},
        "replay": replayed_counts,
        "states": {s: state(answers[s], relevant, new_items) for s in STATES},
        # with the users who had no history before the last 10% (the cold path serves them)
        "all_users": {
            "users": len(cohort),
            "states": {s: state(answers[s], everyone, new_items) for s in STATES},
        },
        "retrained_minus_frozen_ndcg": paired_difference(ndcg["retrained"], ndcg["frozen_after_replay"]),
        "retrain": {
            "wall_seconds": round(retrain_seconds, 1),
            "trainer_seconds": manifest["training"]["seconds"],
            "first_train_wall_seconds": round(first_seconds, 1),
            "events": manifest["data"]["events"]["counts"],
            "gate": manifest.get("gate"),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "replay.json")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--keep", type=Path, default=None, help="keep the splits, artifacts and logs here")
    args = parser.parse_args()
    check_settings(args.settings)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args.settings, work)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(table(result))
    print(f"written {args.out} and {args.out.with_suffix('.png')}")
    return 0


def table(result: dict[str, Any]) -> str:
    metrics = (f"ndcg@{K}", f"recall@{K}", f"precision@{K}", f"map@{K}", "new_item_share")
    lines = [
        f"MovieLens latest-small in time order: {result['users_scored']} users scored on the last 10%, "
        f"{result['replay']['events']} ratings replayed, {result['replay']['upserted']} movies upserted",
        f"{'':26}" + "".join(f"{m:>16}" for m in metrics),
    ]
    for s in STATES:
        row = result["states"][s]
        lines.append(f"{LABELS[s]:26}" + "".join(f"{row[m]:>16.4f}" for m in metrics))
    everyone = result["all_users"]
    lines.append(f"all {everyone['users']} users of the last 10% (its newcomers on the cold path):")
    for s in STATES:
        row = everyone["states"][s]
        lines.append(f"  {LABELS[s]:24}" + "".join(f"{row[m]:>16.4f}" for m in metrics))
    d = result["retrained_minus_frozen_ndcg"]
    lines.append(
        f"retrained - frozen nDCG@{K}: {d['mean']:+.4f} (95% CI {d['ci95'][0]:+.4f} .. {d['ci95'][1]:+.4f}; "
        f"{d['users_better']} users better, {d['users_worse']} worse)"
    )
    r = result["retrain"]
    lines.append(
        f"retrain: {r['wall_seconds']:.0f} s wall ({r['trainer_seconds']:.0f} s in the trainer); gate {_gate(r)}"
    )
    return "\n".join(lines)


def _gate(retrain: Mapping[str, Any]) -> str:
    gate = retrain.get("gate") or {}
    return str(gate.get("reason", "not run"))


if __name__ == "__main__":
    sys.exit(main())
