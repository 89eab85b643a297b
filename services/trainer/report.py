"""report.json, report.md and PNG plots from `services.trainer.benchmark.run`'s result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Microsoft recommenders README, "Algorithm Comparison", MovieLens 100k, top 10 (the published anchor).
ANCHOR: dict[str, dict[str, float]] = {
    "BiVAE": {"map": 0.146126, "ndcg@10": 0.475077, "precision@10": 0.411771, "recall@10": 0.219145},
    "BPR (cornac)": {"map": 0.132478, "ndcg@10": 0.441997, "precision@10": 0.388229, "recall@10": 0.212522},
    "LightGCN": {"map": 0.088526, "ndcg@10": 0.419846, "precision@10": 0.379626, "recall@10": 0.144336},
    "NCF": {"map": 0.107720, "ndcg@10": 0.396118, "precision@10": 0.347296, "recall@10": 0.180775},
    "SAR": {"map": 0.110591, "ndcg@10": 0.382461, "precision@10": 0.330753, "recall@10": 0.176385},
}
TARGET = {"map": 0.16, "ndcg@10": 0.50, "precision@10": 0.43, "recall@10": 0.23}
ROWS = {
    "pipeline": "two-stage: fused candidates + {family} ranker",
    "retrieval": "retrieval alone (reciprocal-rank fusion)",
    "ease": "EASE (baseline)",
    "cooc": "item-item co-occurrence (baseline)",
    "rp3": "RP3beta (baseline)",
    "seq": "sequence neighbours (baseline)",
    "seqease": "sequence EASE (baseline)",
    "recent": "recent interest: co-occurrence of the latest items (baseline)",
    "als": "ALS, implicit, folded in (baseline)",
    "twotower": "two-tower, user tower on the live history (baseline)",
    "content": "content / genres and tags (baseline)",
    "popular": "popularity (baseline)",
}
METRICS = (
    ("map@10", "map"),
    ("ndcg@10", "ndcg@10"),
    ("precision@10", "precision@10"),
    ("recall@10", "recall@10"),
)


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    acc = result["summary"]["accuracy"]
    rows = []
    family = {"lightgbm": "LightGBM", "dcnv2": "DCN-v2", "deepfm": "DeepFM"}
    ranker = str(result["pipeline"]["ranker"].get("family", "lightgbm"))
    for name, label in ROWS.items():
        if name in acc:
            named = label.format(family=family.get(ranker, ranker))
            rows.append({"name": named, **{ours: acc[name][ours] for ours, _ in METRICS}})
    return rows


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    seeds = ", ".join(str(x) for x in result["seeds"])
    lines = [
        f"# Offline evaluation: {result['dataset']['source']}",
        "",
        f"Protocol `{result['protocol']['name']}` (stratified: ratio {result['protocol']['ratio']}, by item), seeds {seeds}; "
        "every test interaction relevant, train items removed, users in train and test scored; MAP = sum of "
        "precision at each hit in the top 10 / the user's number of test items. Mean ± sample std over the "
        "seeds [min, max].",
        "",
        "| model | MAP | nDCG@10 | Precision@10 | Recall@10 |",
        "|---|---|---|---|---|",
    ]

    def cell(m: dict[str, float]) -> str:
        return f"{m['mean']:.4f} ± {m['std']:.4f} [{m['min']:.4f}, {m['max']:.4f}]"

    for row in table_rows(result):
        lines.append(f"| {row['name']} | " + " | ".join(cell(row[ours]) for ours, _ in METRICS) + " |")
    for name, values in ANCHOR.items():
        lines.append(f"| *{name} (published)* | " + " | ".join(f"{values[a]:.4f}" for _, a in METRICS) + " |")
    lines.append("| **target** | " + " | ".join(f"≥ {TARGET[a]:.2f}" for _, a in METRICS) + " |")
    funnel = s["funnel"]
    ks = sorted({k for values in funnel.values() for k in values}, key=int)
    lines += [
        "",
        "## Recall funnel (each source's own list and the fused candidates: recall@k, mean over seeds)",
        "",
        "| list | " + " | ".join(f"@{k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for name, values in funnel.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{values[k]['mean']:.4f}" if k in values else "" for k in ks) + " |"
        )
    n = str(result["pipeline"]["fusion"]["candidates"])
    if n in funnel["candidates"]:
        lines.append(
            f"\nRanker candidates: {n} per user, recall {funnel['candidates'][n]['mean']:.4f} (the ranker's ceiling)."
        )
    lines += [
        "",
        "## Beyond accuracy (top 10, content vectors for diversity)",
        "",
        "| model | coverage | intra-list diversity | ARP | head share |",
        "|---|---|---|---|---|",
    ]
    for name, values in s["beyond"].items():
        lines.append(
            f"| {name} | {values['coverage@10']['mean']:.4f} | {values['ild@10']['mean']:.4f} | "
            f"{values['arp@10']['mean']:.1f} | {values['head_share@10']['mean']:.4f} |"
        )
    lines += [
        "",
        "## MMR diversity re-ranking of the pipeline's top 40 (as the ranking service does it)",
        "",
        "| lambda | nDCG@10 | MAP | intra-list diversity | coverage |",
        "|---|---|---|---|---|",
    ]
    for lam, values in s["mmr"].items():
        lines.append(
            f"| {lam} | {values['ndcg@10']['mean']:.4f} | {values['map@10']['mean']:.4f} | "
            f"{values['ild@10']['mean']:.4f} | {values['coverage@10']['mean']:.4f} |"
        )
    lines += ["", "## Feature importance (gain, mean over seeds, top 20)", ""]
    top = sorted(s["feature_importance"].items(), key=lambda kv: -kv[1])[:20]
    lines += [f"- {name}: {value:.1f}" for name, value in top] or ["(tree rankers only)"]
    lines += ["", "## Training time per stage (seconds, per seed)", ""]
    for run in result["per_seed"]:
        secs = {k: v for k, v in run["seconds"].items() if isinstance(v, float | int)}
        lines.append(f"- seed {run['seed']}: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    lines += [
        "",
        f"Total: {result['seconds']:.1f} s.",
        "",
        "Plots: metric_vs_k.png, recall_funnel.png, "
        "beyond_accuracy.png, comparison.png, feature_importance.png.",
        "",
    ]
    return "\n".join(lines)


def plots(result: dict[str, Any], out: Path) -> list[str]:
    """The PNGs (needs matplotlib, the `eval` extra); returns the written file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []
    first = result["per_seed"][0]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, metric in zip(axes, ("ndcg", "map", "precision", "recall"), strict=True):
        for name, by_k in first["by_k"].items():
            ks = [int(k) for k in by_k]
            ax.plot(ks, [by_k[str(k)][f"{metric}@{k}"] for k in ks], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title(f"{metric}@k (seed {first['seed']})")
    axes[0].legend()
    save(fig, "metric_vs_k.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in result["summary"]["funnel"].items():
        ks = [int(k) for k in values]
        final = name == "candidates"
        ax.plot(
            ks,
            [values[str(k)]["mean"] for k in ks],
            marker="o",
            label=name,
            color="black" if final else None,
            linewidth=2.5 if final else 1.5,
        )
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_title("retrieval recall funnel")
    ax.legend()
    save(fig, "recall_funnel.png")

    beyond = result["summary"]["beyond"]
    names = list(beyond)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, metric in zip(axes, ("coverage@10", "ild@10", "head_share@10"), strict=True):
        ax.bar(names, [beyond[n][metric]["mean"] for n in names])
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=45)
    save(fig, "beyond_accuracy.png")

    rows = table_rows(result)
    labels = [r["name"].split(" (")[0].split(":")[0] for r in rows] + [f"{n} (pub.)" for n in ANCHOR]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    for ax, (ours, anchor) in zip(axes, METRICS, strict=True):
        values = [r[ours]["mean"] for r in rows] + [ANCHOR[n][anchor] for n in ANCHOR]
        errors = [r[ours]["std"] for r in rows] + [0.0] * len(ANCHOR)
        colors = ["tab:blue"] * len(rows) + ["tab:gray"] * len(ANCHOR)
        ax.barh(labels, values, xerr=errors, color=colors)
        ax.axvline(TARGET[anchor], color="red", linestyle="--")
        ax.invert_yaxis()
        ax.set_title(ours)
    save(fig, "comparison.png")

    top = sorted(result["summary"]["feature_importance"].items(), key=lambda kv: -kv[1])[:25]
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.barh([n for n, _ in top][::-1], [v for _, v in top][::-1])
    ax.set_title("ranker feature importance (gain)")
    save(fig, "feature_importance.png")
    return written


def write(result: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(markdown(result))
    pngs = plots(result, out)
    return [out / "report.json", out / "report.md", *(out / p for p in pngs)]
