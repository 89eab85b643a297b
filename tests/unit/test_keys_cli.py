"""`recsys keys add|remove` as an operator runs it: the key once on stdout, only its hash in the file,
one-line refusals with exit 2 that leave the file as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main
from services.gateway import keys


def test_add_prints_the_key_once_and_writes_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.yaml"
    assert (
        main(
            [
                "keys",
                "add",
                "--file",
                str(path),
                "--name",
                "backend-1",
                "--role",
                "recommend",
                "--role",
                "feedback",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    (key,) = out.splitlines()  # alone on stdout: KEY=$(recsys keys add ...)
    assert key.startswith(keys.PREFIX)
    assert key not in err and "backend-1" in err and "recommend, feedback" in err
    text = path.read_text()
    assert key not in text and keys.digest(key) in text
    (stored,) = keys.load(path)
    assert (stored.name, stored.roles) == ("backend-1", ("recommend", "feedback"))

    assert main(["keys", "remove", "--file", str(path), "--name", "backend-1"]) == 0
    assert keys.load(path) == []
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--name", "backend-1", "--role", "recommend"],
            "PATH: a key named 'backend-1' exists already (remove it first to replace it)",
        ),
        (
            ["--name", "x", "--role", "superuser"],
            "--role: unknown role 'superuser' (expected recommend, feedback, admin)",
        ),
        (["--name", "x"], "--role: give at least one (expected recommend, feedback, admin)"),
        (["--name", "x y", "--role", "recommend"], "--name: 'x y' is not 1..64 of A-Z a-z 0-9 . _ -"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    path = tmp_path / "keys.yaml"
    assert main(["keys", "add", "--file", str(path), "--name", "backend-1", "--role", "recommend"]) == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["keys", "add", "--file", str(path), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"recsys keys add: {message.replace('PATH', str(path))}"]
    assert path.read_bytes() == before


def test_a_malformed_file_is_named_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - name: old\n    sha256: not-a-hash\n    roles: [recommend]\n")
    before = path.read_bytes()
    assert main(["keys", "add", "--file", str(path), "--name", "x", "--role", "recommend"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"recsys keys add: {path}: keys[0].sha256: expected 64 lowercase hex digits, the SHA-256 of the key "
        "(never the key itself)"
    ]
    assert path.read_bytes() == before
    assert main(["keys", "remove", "--file", str(tmp_path / "none.yaml"), "--name", "x"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"recsys keys remove: {tmp_path / 'none.yaml'}: no such file"
    ]


def test_the_cli_reads_its_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.client import api_key_from_env, auth_metadata

    monkeypatch.setenv("RECSYS_API_KEY", "rsk_saved_with_a_newline\n")  # `recsys keys add ... > FILE`
    assert api_key_from_env() == "rsk_saved_with_a_newline"
    assert auth_metadata(api_key_from_env()) == (("authorization", "Bearer rsk_saved_with_a_newline"),)
    monkeypatch.setenv("RECSYS_API_KEY", "")
    assert api_key_from_env() is None and auth_metadata(None) == ()
