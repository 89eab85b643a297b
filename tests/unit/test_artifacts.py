from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.common.artifacts import (
    ArtifactError,
    ArtifactVersion,
    ArtifactWatcher,
    open_current,
    open_version,
    publish,
    set_current,
    staging_dir,
)


def make_version(root: Path, name: str, payload: str = "x") -> ArtifactVersion:
    staging = staging_dir(root, name)
    (staging / "a.txt").write_text(payload)
    return publish(root, staging, name, {"params": {}, "metrics": {}})


def test_publish_then_open_verifies_every_file(tmp_path: Path) -> None:
    published = make_version(tmp_path, "v1")
    opened = open_current(tmp_path)
    assert opened.version == "v1" and opened.manifest["files"] == published.manifest["files"]
    assert not list(tmp_path.glob(".staging-*")), "staging directory left behind"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "a.txt").write_text("tampered"), "corrupt"),
        (lambda p: (p / "a.txt").unlink(), "missing"),
        (lambda p: (p / "manifest.json").write_text("{"), "not valid JSON"),
        (lambda p: (p / "manifest.json").write_text(json.dumps({"schema_version": 99})), "schema_version"),
    ],
)
def test_damaged_versions_are_refused_with_the_reason(tmp_path: Path, damage: object, reason: str) -> None:
    version = make_version(tmp_path, "v1")
    damage(version.path)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=reason):
        open_version(tmp_path, "v1")


def test_missing_root_or_pointer(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        open_current(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="CURRENT"):
        open_current(tmp_path)


def test_watcher_keeps_the_old_version_when_a_new_one_fails(tmp_path: Path) -> None:
    loaded: list[str] = []

    async def loader(version: ArtifactVersion) -> None:
        if (version.path / "a.txt").read_text() == "bad":
            raise ValueError("bad payload")
        loaded.append(version.version)

    async def scenario() -> None:
        watcher = ArtifactWatcher(tmp_path, loader)
        assert not await watcher.check()  # nothing published yet
        make_version(tmp_path, "v1")
        assert await watcher.check() and watcher.loaded == "v1"
        make_version(tmp_path, "v2", payload="bad")
        assert await watcher.check() and watcher.loaded == "v1"
        make_version(tmp_path, "v3")
        assert await watcher.check() and watcher.loaded == "v3"
        set_current(tmp_path, "v1")
        assert await watcher.check() and watcher.loaded == "v1"

    asyncio.run(scenario())
    assert loaded == ["v1", "v3", "v1"]
