"""The ranker families side by side: LightGBM (the default), DCN-v2 and DeepFM, each trained by the one
pipeline (`recsys evaluate`'s fit, `ranker.family=...`; the candidates and features computed once
per seed and shared, so the families differ only in their ranker) on the published ML-100k protocol
(stratified by item 75 / 25, seeds 42, 43, 44) and scored on its test split: MAP / nDCG / P / R@10, the ranker's
training time, and the SERVED scorer's latency for one list of 500 candidates on CPU, one thread and two
(LightGBM: the compiled trees the ranking service swaps in; DCN-v2 / DeepFM: the exported ONNX model in
onnxruntime, as the ranking service loads it from the artifact version).

    .venv/bin/python bench/ranker_families.py [--seeds 42 43 44] [--data DIR] [--set NAME=VALUE ...]

Writes bench/results/ranker_families.json and bench/results/ranker_families.png, prints the table.
Latencies are ratios between families measured in one run (docs: the machines differ in speed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.validation import load_ml100k  # noqa: E402
from services.trainer.benchmark import LIST, aggregate, served_latency  # noqa: E402
from services.trainer.data import Dataset  # noqa: E402
from services.trainer.evaluate_cli import DEFAULT_CACHE  # noqa: E402
from services.trainer.evaluation import evaluate  # noqa: E402
from services.trainer.pipeline import PipelineConfig, Progress, fit_rankers  # noqa: E402
from services.trainer.protocols import Protocol  # noqa: E402

FAMILIES = ("lightgbm", "dcnv2", "deepfm")
METRICS = ("map@10", "ndcg@10", "precision@10", "recall@10")


def run_seed(data: Dataset, seed: int, settings: list[str], work: Path) -> list[dict[str, Any]]:
    """Every family on one seed's split: `fit_rankers` computes the candidates and feature groups once
    and trains each family's ranker on the same rows, so the families differ in nothing else."""
    base = PipelineConfig(protocol=Protocol(name="stratified"), seed=seed)
    configs = [base.with_settings([f"ranker.family={family}", *settings]) for family in FAMILIES]
    train, test = base.protocol.holdout(data.log, seed)
    fitted_all = fit_rankers(data.known_from(train), train, configs, Progress(True, f"seed {seed}: "))
    results = []
    for family, fitted in zip(FAMILIES, fitted_all, strict=True):
        scored = evaluate(fitted, test)["accuracy"]
        result = {
            "family": family,
            "seed": seed,
            "accuracy": {m: scored["pipeline"][m] for m in METRICS},
            "popular": {m: scored["popular"][m] for m in METRICS},
            "ranker_training_seconds": fitted.info["ranker_seconds"],
            "latency_500": served_latency(fitted, work / f"{family}-{seed}"),
        }
        print(f"{family} seed {seed}: {result}", file=sys.stderr, flush=True)
        results.append(result)
    return results


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    x = np.arange(len(FAMILIES))
    for i, metric in enumerate(METRICS):
        means = [summary[f]["accuracy"][metric]["mean"] for f in FAMILIES]
        stds = [summary[f]["accuracy"][metric]["std"] for f in FAMILIES]
        axes[0].bar(x + (i - 1.5) * 0.2, means, 0.2, yerr=stds, label=metric)
    axes[0].set_xticks(x, FAMILIES)
    axes[0].set_title("accuracy on the test split (mean ± std over seeds)")
    axes[0].legend()
    axes[1].bar(x, [summary[f]["ranker_training_seconds"]["mean"] for f in FAMILIES])
    axes[1].set_xticks(x, FAMILIES)
    axes[1].set_title("ranker training (s, mean over seeds)")
    for j, threads in enumerate(("1_thread", "2_threads")):
        axes[2].bar(
            x + (j - 0.5) * 0.35,
            [summary[f]["latency_500"][threads]["mean"] for f in FAMILIES],
            0.35,
            label=threads,
        )
    axes[2].set_xticks(x, FAMILIES)
    axes[2].set_title(f"served scoring of {LIST} candidates, p50 (ms)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_CACHE, help="MovieLens 100k directory (u.data)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ranker_families.json")
    args = parser.parse_args()
    data = load_ml100k(args.data)
    # torch and the optimisers' compiler stack load on first use: here, so no family's training time
    # includes them
    import torch._dynamo  # noqa: F401

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [r for seed in args.seeds for r in run_seed(data, seed, args.settings, Path(tmp))]
    summary: dict[str, Any] = {}
    for family in FAMILIES:
        mine = [r for r in runs if r["family"] == family]
        summary[family] = {
            "accuracy": {m: aggregate([r["accuracy"][m] for r in mine]) for m in METRICS},
            "ranker_training_seconds": aggregate([r["ranker_training_seconds"] for r in mine]),
            "latency_500": {
                t: aggregate([r["latency_500"][t]["p50_ms"] for r in mine]) for t in mine[0]["latency_500"]
            },
        }
    # the same split per seed for every family: popularity's row once
    popular = {m: aggregate([r["popular"][m] for r in runs if r["family"] == FAMILIES[0]]) for m in METRICS}
    summary["popular"] = {"accuracy": popular}
    result = {
        "protocol": "ML-100k, stratified by item 75/25 (the published protocol)",
        "seeds": args.seeds,
        "settings": args.settings,
        "per_run": runs,
        "summary": summary,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    plot(summary, png)
    header = "".join(f"{m:>14}" for m in METRICS) + f"{'train s':>10}{'1 thr ms':>10}{'2 thr ms':>10}"
    print(f"{'family':10}{header}")
    print(
        f"{'popular':10}" + "".join(f"{popular[m]['mean']:>8.4f} ±{popular[m]['std']:.3f}" for m in METRICS)
    )
    for family in FAMILIES:
        s = summary[family]
        cells = "".join(f"{s['accuracy'][m]['mean']:>8.4f} ±{s['accuracy'][m]['std']:.3f}" for m in METRICS)
        lat = s["latency_500"]
        print(
            f"{family:10}{cells}{s['ranker_training_seconds']['mean']:>10.1f}"
            f"{lat['1_thread']['mean']:>10.2f}{lat['2_threads']['mean']:>10.2f}"
        )
    print(f"written {args.out} and {png}; wall time {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
