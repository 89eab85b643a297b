"""bench/accuracy_ml100k.py refuses a bad --set before it reads or fetches any data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "accuracy_ml100k.py"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("nosuch=1", "unknown setting 'nosuch'"),
        ("ranker.rounds=many", "ranker.rounds: 'many' is not a int"),
        ("ranker.seeds", "expected NAME=VALUE"),
    ],
)
def test_bad_setting_exits_with_a_message_naming_it(setting: str, message: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--set", setting, "--data", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("--set") and setting.partition("=")[0] in last and message in last  # no traceback
    assert not out.exists()
