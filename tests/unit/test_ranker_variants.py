"""bench/ranker_variants.py refuses what its cache cannot answer, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ranker_variants.py"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "more:candidates=200"], "'candidates' is not one of"),  # changes what is cached
        (["--variant", "fast:max_rounds=many"], "max_rounds: invalid literal"),
        (["--variant", "k3:ranker_folds=three"], "ranker_folds: invalid literal"),  # a stacking field
        (["--variant", "max_rounds=250"], "expected NAME:FIELD=VALUE"),
        (["--variant", "none:ranker_seeds=0"], "ranker_seeds must be >= 1, got 0"),
        (["--splits", "42"], "expected OUTER:INNER seeds"),
        ([], "u.data: run bench/accuracy_ml100k.py"),  # --data is an empty directory
    ],
)
def test_bad_arguments_exit_with_a_message_naming_them(args: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--data", str(tmp_path), "--out", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.json").exists()
