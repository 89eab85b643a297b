"""MovieLens 100k accuracy, served: the published comparison's protocol scored through the running
services, as a user would get it.

For each seed (42, 43, 44) of python_stratified_split(ratio=0.75, by item):
  1. write the train split as a MovieLens 100k directory (u.data, and the item and user metadata of the
     train split's items and users: an item only in the test split stays unknown, as the protocol's
     models know only train items);
  2. run `recsys train --protocol stratified` on it (the CLI, in a subprocess: the same training a user
     runs; its own metrics come from an inner holdout of the train split);
  3. start the four services on the exported version (services.local.LocalPlatform, budgets relaxed so
     a busy machine does not degrade answers), wait for the compiled ranker, and ask the gateway over
     gRPC for the top 10 of every test user; score against the test split;
  4. score the same artifacts in-process (the services' handlers called directly, LightGBM trees), and
     each source alone and the fused retrieval order from the same loaded sources.

Writes bench/results/accuracy_ml100k.json and bench/results/accuracy_ml100k/ (report.md, PNGs).
MovieLens 100k is fetched with ../shared/scripts/get-ml100k.sh when missing (never committed).

    .venv/bin/python bench/accuracy_ml100k.py [--seeds 42 43 44] [--data DIR] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.served import METRICS, check_settings, per_seed, recsys_train, relevant_sets, serve_and_score  # noqa: E402
from services.common.artifacts import open_current  # noqa: E402
from services.trainer.benchmark import aggregate  # noqa: E402
from services.trainer.data import Dataset, Log, load  # noqa: E402
from services.trainer.report import ANCHOR  # noqa: E402
from services.trainer.splits import stratified_split  # noqa: E402

SCRIPT = ROOT.parent / "shared" / "scripts" / "get-ml100k.sh"
CACHE = Path.home() / ".cache" / "recsys" / "ml-100k"
MUST = {"map@10": 0.160, "ndcg@10": 0.505, "precision@10": 0.438, "recall@10": 0.237}
AIM = {"map@10": 0.165, "ndcg@10": 0.515}


def ensure_data(path: Path) -> Path:
    if (path / "u.data").is_file():
        return path
    if not SCRIPT.is_file():
        sys.exit(f"no {path}/u.data and no {SCRIPT}: run `recsys data fetch movielens-100k` first")
    subprocess.run(["bash", str(SCRIPT), str(path)], check=True, stdout=subprocess.DEVNULL)
    return path


def write_train_split(source: Path, train: Log, out: Path) -> None:
    """`train` as u.data (in the input file's order), with the metadata of its items and users."""
    out.mkdir(parents=True)
    order = train.file_order()
    with (out / "u.data").open("w") as f:
        for i in order.tolist():
            f.write(f"{train.users[i]}\t{train.items[i]}\t{train.ratings[i]:g}\t{int(train.timestamps[i])}\n")
    keep = {"item": set(train.items.tolist()), "user": set(train.users.tolist())}
    for kind in ("item", "user"):
        path = source / f"ml-100k.{kind}"
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [lines[0], *(line for line in lines[1:] if line.split("\t", 1)[0] in keep[kind])]
        (out / path.name).write_text("\n".join(kept) + "\n", encoding="utf-8")


def run_seed(data: Dataset, source: Path, seed: int, settings: list[str], work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    train, test = stratified_split(data.log, 0.75, filter_by="item", seed=seed)
    split_dir, artifacts = work / "train-split", work / "artifacts"
    write_train_split(source, train, split_dir)
    print(f"seed {seed}:", file=sys.stderr, flush=True)
    flags = [
        "--protocol",
        "stratified",
        "--seed",
        str(seed),
        *(arg for s in settings for arg in ("--set", s)),
    ]
    trained = recsys_train(split_dir, artifacts, flags, work / "train.log")
    manifest = open_current(artifacts).manifest
    scored = serve_and_score(artifacts, relevant_sets(train, test), work)
    result = {
        "seed": seed,
        "version": manifest["version"],
        "sizes": {"train": len(train), "test": len(test)},
        **scored,
        "trainer_holdout": manifest["metrics"]["accuracy"]["pipeline"],
        "seconds": {"train": round(trained, 1), "total": round(time.perf_counter() - started, 1)},
    }
    print(
        f"seed {seed}: served {result['served']}  in-process {result['in_process']}",
        file=sys.stderr,
        flush=True,
    )
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in ("served", "in_process"):
        rows[name] = {m: aggregate([r[name][m] for r in runs]) for m in METRICS}
    for name in runs[0]["baselines"]:
        rows[name] = {m: aggregate([r["baselines"][name][m] for r in runs]) for m in METRICS}
    gap = [r["served"]["ndcg@10"] - r["in_process"]["ndcg@10"] for r in runs]
    return {
        "rows": rows,
        "served_minus_in_process_ndcg@10": aggregate(gap),
        "must": {m: rows["served"][m]["mean"] >= v for m, v in MUST.items()},
        "aim": {m: rows["served"][m]["mean"] >= v for m, v in AIM.items()},
        "within_0.005_ndcg_of_in_process": abs(float(np.mean(gap))) <= 0.005,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        "# MovieLens 100k, served",
        "",
        f"Stratified 75/25 split by item, seeds {', '.join(str(x) for x in result['seeds'])}; `recsys train` on each "
        "train split, then Recommend(k=10) through the gateway for every test user. Mean ± sample std over seeds.",
        "",
        "| | MAP@10 | nDCG@10 | P@10 | R@10 |",
        "|---|---|---|---|---|",
    ]
    labels = {"served": "**served (gateway, gRPC)**", "in_process": "in-process, same artifacts"}
    for name, row in s["rows"].items():
        label = labels.get(name, f"{name} alone" if name != "retrieval" else "retrieval (fused, no ranker)")
        lines.append(
            f"| {label} | "
            + " | ".join(f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in METRICS)
            + " |"
        )
    for name, values in ANCHOR.items():
        cells = [values["map"], values["ndcg@10"], values["precision@10"], values["recall@10"]]
        lines.append(f"| *{name} (published)* | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    lines.append("| must (served mean) | " + " | ".join(f"≥ {MUST[m]:.3f}" for m in METRICS) + " |")
    lines += [
        "",
        "| seed | served MAP | nDCG | P | R | in-process nDCG | same top 10 | degraded | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["per_seed"]:
        sv, ip, agree = r["served"], r["in_process"], r["served_vs_in_process"]
        lines.append(
            f"| {r['seed']} | {sv['map@10']:.4f} | {sv['ndcg@10']:.4f} | {sv['precision@10']:.4f} | {sv['recall@10']:.4f} "
            f"| {ip['ndcg@10']:.4f} | {agree['same_top10']}/{agree['users']} | {agree['degraded']} | {r['seconds']['train']:.0f} |"
        )
    gap = s["served_minus_in_process_ndcg@10"]
    lines += ["", f"Served minus in-process nDCG@10: {gap['mean']:+.5f} (must be within ±0.005).", ""]
    lines.append("Must: " + ", ".join(f"{m} {'met' if ok else 'NOT met'}" for m, ok in s["must"].items()))
    lines.append("Aim: " + ", ".join(f"{m} {'met' if ok else 'not met'}" for m, ok in s["aim"].items()))
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]["rows"]
    names = list(rows)
    fig, axes = plt.subplots(1, 4, figsize=(18, 0.35 * (len(names) + len(ANCHOR)) + 1.5))
    anchor_key = {
        "map@10": "map",
        "ndcg@10": "ndcg@10",
        "precision@10": "precision@10",
        "recall@10": "recall@10",
    }
    for ax, metric in zip(axes, METRICS, strict=True):
        labels = names + [f"{n} (published)" for n in ANCHOR]
        values = [rows[n][metric]["mean"] for n in names] + [ANCHOR[n][anchor_key[metric]] for n in ANCHOR]
        errors = [rows[n][metric]["std"] for n in names] + [0.0] * len(ANCHOR)
        colors = ["tab:red" if n == "served" else "tab:blue" for n in names] + ["tab:gray"] * len(ANCHOR)
        ax.barh(labels, values, xerr=errors, color=colors)
        ax.axvline(MUST[metric], color="black", linestyle="--", linewidth=1)
        ax.invert_yaxis()
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=CACHE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline setting passed to `recsys train`",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep each seed's split, artifacts and logs here"
    )
    args = parser.parse_args()
    check_settings(args.settings)
    started = time.perf_counter()
    source = ensure_data(args.data)
    data = load(source)
    results = per_seed(
        args.seeds, args.keep, lambda seed, work: run_seed(data, source, seed, args.settings, work)
    )
    result = {
        "benchmark": "accuracy_ml100k (served)",
        "protocol": "python_stratified_split(ratio=0.75, filter_by='item'); every test interaction relevant",
        "seeds": args.seeds,
        "settings": args.settings,
        "per_seed": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    result["summary"] = summary(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy_ml100k.json").write_text(json.dumps(result, indent=1) + "\n")
    report_dir = args.out / "accuracy_ml100k"
    report_dir.mkdir(exist_ok=True)
    (report_dir / "report.md").write_text(markdown(result))
    plot(result, report_dir)
    print(markdown(result))
    print(f"wall time {result['wall_seconds']:.0f} s; written {args.out / 'accuracy_ml100k.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
