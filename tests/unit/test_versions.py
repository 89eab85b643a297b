"""The artifact root's lifecycle: promotion history, rollback, retention, and the `recsys versions`,
`promote`, `rollback` commands with their one-line errors (small hand-made versions, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main
from services.common import artifacts
from services.common.artifacts import ArtifactError, publish, staging_dir
from services.trainer.versions_cli import parse_duration


def make(root: Path, name: str, *, promote: bool = True, gate: dict[str, object] | None = None) -> None:
    staging = staging_dir(root, name)
    (staging / "a.txt").write_text(name)
    manifest: dict[str, object] = {"metrics": {"accuracy": {"pipeline": {"ndcg@10": 0.25, "map@10": 0.125}}}}
    if gate is not None:
        manifest["gate"] = gate
    publish(root, staging, name, manifest, promote=promote)


def test_publish_without_promotion_leaves_current_and_history_alone(tmp_path: Path) -> None:
    make(tmp_path, "v1")
    make(tmp_path, "v2", promote=False)
    assert artifacts.current_version_name(tmp_path) == "v1"
    assert artifacts.history(tmp_path) == ["v1"]
    assert artifacts.version_names(tmp_path) == ["v1", "v2"]


def test_rollback_walks_back_through_the_promotions_never_back_and_forth(tmp_path: Path) -> None:
    for name in ("v1", "v2", "v3"):
        make(tmp_path, name)
    artifacts.promote_version(tmp_path, "v2")  # promoted again: moves to the end, once
    assert artifacts.history(tmp_path) == ["v1", "v3", "v2"]
    assert artifacts.rollback(tmp_path) == ("v2", "v3")
    assert artifacts.rollback(tmp_path) == ("v3", "v1")
    assert artifacts.current_version_name(tmp_path) == "v1"
    with pytest.raises(ArtifactError, match="nothing to roll back"):
        artifacts.rollback(tmp_path)
    assert artifacts.current_version_name(tmp_path) == "v1"


def test_rollback_refuses_a_corrupt_target_and_changes_nothing(tmp_path: Path) -> None:
    make(tmp_path, "v1")
    make(tmp_path, "v2")
    (tmp_path / "v1" / "a.txt").write_text("tampered")
    with pytest.raises(ArtifactError, match="corrupt"):
        artifacts.rollback(tmp_path)
    assert artifacts.current_version_name(tmp_path) == "v2"
    assert artifacts.history(tmp_path) == ["v1", "v2"]


def test_a_root_from_before_history_starts_from_its_current(tmp_path: Path) -> None:
    make(tmp_path, "v1")
    (tmp_path / artifacts.HISTORY).unlink()
    make(tmp_path, "v2")
    assert artifacts.history(tmp_path) == ["v1", "v2"]


def test_prune_keeps_current_pinned_the_rollback_target_and_the_newest(tmp_path: Path) -> None:
    for name in ("v1", "v2", "v3", "v4", "v5", "v6"):
        make(tmp_path, name, promote=name in ("v2", "v3"))
    (tmp_path / "PINNED").write_text("v1  # an experiment arm\n")
    # CURRENT v3, rollback target v2, PINNED v1, newest v6: v4 and v5 go.
    assert artifacts.prune(tmp_path, 1) == ["v4", "v5"]
    assert artifacts.version_names(tmp_path) == ["v1", "v2", "v3", "v6"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".deleting-")]
    assert artifacts.prune(tmp_path, 1) == []
    with pytest.raises(ArtifactError, match="at least one"):
        artifacts.prune(tmp_path, 0)


def test_the_versions_command_lists_state_gate_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make(tmp_path, "v1")
    make(tmp_path, "v2")
    refusal = {"passed": False, "reason": "refused: ndcg@10 0.1 vs serving v2 0.2"}
    make(tmp_path, "v3", promote=False, gate=refusal)
    make(tmp_path, "v4", promote=False)
    (tmp_path / "PINNED").write_text("v4\n")
    assert main(["versions", "--artifacts-dir", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["v1"].split()[2] == "previous" and lines["v2"].split()[2] == "CURRENT"
    assert "refused-by-gate" in lines["v3"] and "refused: ndcg@10 0.1 vs serving v2 0.2" in lines["v3"]
    assert "PINNED" in lines["v4"] and "0.2500" in lines["v4"]


def test_promote_and_rollback_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make(tmp_path, "v1")
    make(tmp_path, "v2", promote=False)
    root = ["--artifacts-dir", str(tmp_path)]
    assert main(["promote", "v2", *root]) == 0
    assert artifacts.current_version_name(tmp_path) == "v2"
    assert main(["rollback", *root]) == 0
    assert "CURRENT: v1 (was v2)" in capsys.readouterr().out
    assert artifacts.current_version_name(tmp_path) == "v1"

    def one_line_error(argv: list[str], words: str) -> None:
        assert main([*argv, *root]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err

    one_line_error(["rollback"], "nothing to roll back")
    one_line_error(["promote", "v9"], "no version 'v9'")
    (tmp_path / "v2" / "a.txt").write_text("tampered")
    one_line_error(["promote", "v2"], "corrupt")
    assert artifacts.current_version_name(tmp_path) == "v1"
    one_line_error(["versions", "prune", "--keep", "0"], "at least one")


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("30m", 1800), ("1h30m", 5400), ("1d", 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "10x", "0s", "1h 30m", "-1s", "s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--every"):
        parse_duration(text)


def test_retrain_with_a_bad_duration_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retrain", "--every", "soon", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["recsys retrain: --every 'soon': expected a duration such as 10s, 30m, 1h30m or 1d"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--gate", "--gate-tolerance", "-1"], "--gate-tolerance -1.0: expected a number >= 0"),
        (["--keep", "0"], "--keep 0: keep at least one version"),
    ],
)
def test_bad_train_flags_are_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], words: str
) -> None:
    out = tmp_path / "artifacts"
    assert main(["train", "--no-progress", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recsys train: {words}"]
    assert not out.exists()
