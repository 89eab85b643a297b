"""bench/sources_alone.py: every source scored alone on a validation holdout, each variant applied."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from services.trainer.data import BUNDLED_DATA
from services.trainer.pipeline import PipelineConfig

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sources_alone.py"


def write_udata(directory: Path, items: int = 300) -> None:
    """latest-small's ratings of its `items` most rated movies, as a MovieLens 100k u.data."""
    with (BUNDLED_DATA / "ratings.csv").open() as f:
        rows = list(csv.DictReader(f))
    top = {m for m, _ in Counter(r["movieId"] for r in rows).most_common(items)}
    directory.mkdir()
    (directory / "u.data").write_text(
        "".join(
            f"{r['userId']}\t{r['movieId']}\t{round(float(r['rating']))}\t{r['timestamp']}\n"
            for r in rows
            if r["movieId"] in top
        )
    )


def test_scores_every_source_alone_for_each_variant(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "alone.json"
    write_udata(data)
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            str(data),
            "--splits",
            "42:9999",
            "--variant",
            "weak_als:als.regularization=0.1,als.factors=32",
            "--variant",
            "few:fusion.candidates=5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    table = result["mean_map@10"]
    assert set(table) == {"defaults", "weak_als", "few"}
    for row in table.values():
        assert set(row) == set(PipelineConfig().sources) and all(0.0 <= v <= 1.0 for v in row.values())
        assert row["ease"] > row["popular"] > 0.0
    # the variant changes ALS and nothing else
    assert table["weak_als"]["als"] != table["defaults"]["als"]
    assert {s: v for s, v in table["weak_als"].items() if s != "als"} == {
        s: v for s, v in table["defaults"].items() if s != "als"
    }
    # the fused candidates' recall: fewer candidates find fewer held-out items, and no source changes
    recall = result["mean_candidate_recall"]
    assert 0.0 < recall["few"] < recall["defaults"] <= 1.0
    assert table["few"] == table["defaults"]


def test_bad_variant_exits_with_a_message_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--variant", "x:nosuch=1", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "unknown setting 'nosuch'" in done.stderr.strip().splitlines()[-1]
