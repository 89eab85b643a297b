"""The `recsys` command as a person runs it: one-line errors and non-zero exits on bad input, titles
from `recommend`, and `up` running and stopping all four services."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from services.healthcheck import health_status
from services.local import SERVICES, LocalPlatform, free_port

SERVING = 1


def recsys(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_train_on_a_malformed_csv_names_the_line_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "log.csv"
    data.write_text("user,item,rating,timestamp\n1,10,4.0,100\n1,11,five,101\n")
    result = recsys("train", "--data", str(data), "--out", str(tmp_path / "artifacts"), "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip() == "recsys train: log.csv line 3: rating 'five' is not a number"
    assert not (tmp_path / "artifacts" / "CURRENT").exists()


def test_serve_with_a_bad_flag_is_one_line(tmp_path: Path) -> None:
    result = recsys("serve", "gateway", "--port", "not-a-port")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "recsys serve: --port: invalid literal for int() with base 10: 'not-a-port'"
    ]
    bad = tmp_path / "experiments.yaml"
    bad.write_text("experiments:\n  - id: e\n    salt: s\n    arms: [{name: a, weight: -1}]\n")
    result = recsys("serve", "gateway", "--experiments", str(bad))
    assert result.returncode == 2
    assert "experiments[0].arms[0].weight" in result.stderr and "Traceback" not in result.stderr


def test_recommend_prints_titles(platform: LocalPlatform, artifacts_root: Path) -> None:
    result = recsys(
        "recommend",
        "--user",
        "1",
        "-k",
        "3",
        "--gateway",
        platform.address("gateway"),
        "--artifacts-dir",
        str(artifacts_root),
    )
    assert result.returncode == 0, result.stderr
    ranked = [line for line in result.stdout.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    assert len(ranked) == 3
    assert all("(" in line and ")" in line for line in ranked), "titles with years expected"
    bad = recsys("recommend", "--user", "1", "-k", "0", "--gateway", platform.address("gateway"))
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "recsys recommend: INVALID_ARGUMENT: k: must be in 1..1000, got 0"
    )


def test_up_runs_all_four_and_stops_cleanly_on_sigterm(artifacts_root: Path, tmp_path: Path) -> None:
    base = free_port()
    while any(health_status(f"127.0.0.1:{base + i}") != 0 for i in range(4)):
        base = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--artifacts-dir",
            str(artifacts_root),
            "--port",
            str(base),
            "--work-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # `up` prints the addresses once every service is SERVING
            printed.append(line)
            if "Ctrl-C stops" in line:
                break
        assert any("Ctrl-C stops" in line for line in printed), "`up` ended before serving"
        # A generous deadline: on a loaded machine a new channel's first call can take over a second,
        # and what is checked here is that every service answers SERVING, not how fast.
        statuses = [health_status(f"127.0.0.1:{base + i}", timeout_s=15.0) for i in range(4)]
        assert statuses == [SERVING] * 4, f"health of gateway, features, retrieval, ranking: {statuses}"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    out = "".join(printed) + out
    assert proc.returncode == 0, err
    for name in SERVICES:
        assert name in out
    assert all(health_status(f"127.0.0.1:{base + i}") == 0 for i in range(4)), "a service outlived `up`"
