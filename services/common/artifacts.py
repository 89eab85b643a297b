"""The versioned artifact directory that the trainer writes and the services serve.

    <root>/<version>/manifest.json   schema version, data fingerprint, params, metrics, sha256 of every file
    <root>/<version>/...             the files the manifest lists
    <root>/CURRENT                   the version to serve (one line)
    <root>/PINNED                    optional: more versions to serve side by side (one a line, `#` comments),
                                     for experiment arms that ask for a version by name
    <root>/HISTORY                   the versions promoted to CURRENT, oldest first (one a line): what
                                     `rollback` returns to

A version is written into a hidden temporary directory and renamed into place only when complete, and
CURRENT is replaced atomically, so a reader never sees half a version. Readers verify every checksum
before they use a version: a corrupt or partial one is refused with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
PINNED = "PINNED"
HISTORY = "HISTORY"
LOCK = ".lock"

log = logging.getLogger(__name__)


class ArtifactError(Exception):
    """A version that cannot be served; the message says why."""


@dataclass(frozen=True)
class ArtifactVersion:
    version: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise ArtifactError(f"artifact {self.version} has no file {name!r}")
        return self.path / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_version_name() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def staging_dir(root: Path, version: str) -> Path:
    """A fresh hidden directory to write a version's files into before `publish`."""
    path = root / f".staging-{version}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish(
    root: Path, staging: Path, version: str, manifest: dict[str, Any], *, promote: bool = True
) -> ArtifactVersion:
    """Checksum every file in `staging`, write the manifest, move it to `root/version`, and (`promote`)
    point CURRENT at it. The manifest is written once, here: whatever decides promotion (the quality
    gate) has decided before, and its verdict is part of `manifest`."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(staging.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    full = {
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        **manifest,
        "files": files,
    }
    (staging / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    final = root / version
    if final.exists():
        raise ArtifactError(f"artifact version {version} already exists in {root}")
    staging.rename(final)
    if promote:
        promote_version(root, version)
    return ArtifactVersion(version, final, full)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_current(root: Path, version: str) -> None:
    """Point CURRENT at `version` (the pointer alone; `promote_version` also records the promotion)."""
    _atomic_write(root / CURRENT, version + "\n")


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the root's lock: promotions, rollbacks and pruning by different processes (a scheduled
    retrain and an operator) take turns, so HISTORY and CURRENT always agree."""
    with (root / LOCK).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def history(root: Path) -> list[str]:
    """The promotions, oldest first. A root from before HISTORY existed starts from its CURRENT."""
    path = root / HISTORY
    if path.is_file():
        return [_check_name(line.strip(), path) for line in path.read_text().splitlines() if line.strip()]
    try:
        return [current_version_name(root)]
    except ArtifactError:
        return []


def promote_version(root: Path, version: str) -> None:
    """Point CURRENT at `version` and append it to HISTORY (written atomically, before CURRENT moves:
    a crash between the two leaves a history whose last entry is not CURRENT, which `rollback` handles)."""
    with locked(root):
        promoted = [v for v in history(root) if v != version] + [version]
        _atomic_write(root / HISTORY, "".join(f"{v}\n" for v in promoted))
        set_current(root, version)


def rollback_target(root: Path) -> str | None:
    """The version `rollback` would return to: the newest promotion before CURRENT that still exists."""
    current = current_version_name(root)
    earlier = [v for v in history(root) if v != current and (root / v / MANIFEST).is_file()]
    return earlier[-1] if earlier else None


def rollback(root: Path) -> tuple[str, str]:
    """CURRENT back to the version promoted before it, verified first; (from, to). The rolled-back
    version leaves HISTORY, so a second rollback goes one further back, never back and forth."""
    with locked(root):
        current = current_version_name(root)
        target = rollback_target(root)
        if target is None:
            raise ArtifactError(f"nothing to roll back to: {current} is the only promoted version in {root}")
        open_version(root, target)
        kept = history(root)
        kept = kept[: kept.index(target) + 1]
        _atomic_write(root / HISTORY, "".join(f"{v}\n" for v in kept))
        set_current(root, target)
    return current, target


def version_names(root: Path) -> list[str]:
    """Every published version under `root`, oldest first (names are UTC timestamps, so they sort)."""
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions, never CURRENT, a PINNED one or the rollback target;
    returns the deleted names. A version is renamed to a hidden name before it is removed, so a crash
    mid-delete leaves no half version that looks like one."""
    if keep < 1:
        raise ArtifactError(f"--keep {keep}: keep at least one version")
    with locked(root):
        names = version_names(root)
        protected = set(pinned_version_names(root)) | set(names[-keep:])
        with contextlib.suppress(ArtifactError):
            protected.add(current_version_name(root))
            target = rollback_target(root)
            if target is not None:
                protected.add(target)
        doomed = [n for n in names if n not in protected]
        for name in doomed:
            trash = root / f".deleting-{name}"
            (root / name).rename(trash)
            shutil.rmtree(trash)
        if doomed and (root / HISTORY).is_file():
            _atomic_write(root / HISTORY, "".join(f"{v}\n" for v in history(root) if v not in doomed))
    return doomed


def current_version_name(root: Path) -> str:
    pointer = root / CURRENT
    if not root.is_dir():
        raise ArtifactError(f"artifacts directory {root} does not exist (run `recsys train` first)")
    if not pointer.is_file():
        raise ArtifactError(f"{pointer} is missing (run `recsys train` first)")
    name = pointer.read_text().strip()
    if not name or "/" in name or name.startswith("."):
        raise ArtifactError(f"{pointer} does not name a version: {name!r}")
    return name


def _check_name(name: str, where: Path) -> str:
    if not name or "/" in name or name.startswith("."):
        raise ArtifactError(f"{where} does not name a version: {name!r}")
    return name


def pinned_version_names(root: Path) -> list[str]:
    """The versions <root>/PINNED lists (one a line; blank lines and `#` comments skipped); [] without it."""
    path = root / PINNED
    if not path.is_file():
        return []
    names: list[str] = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name and name not in names:
            names.append(_check_name(name, path))
    return names


def open_version(root: Path, version: str) -> ArtifactVersion:
    """Read and verify one version: manifest present and parseable, schema known, every file's sha256."""
    path = root / version
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"artifact {version}: {manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"artifact {version}: manifest.json is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ArtifactError(f"artifact {version}: schema_version {found!r}, expected {SCHEMA_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"artifact {version}: manifest lists no files")
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"artifact {version}: file {name} is missing")
        if sha256_file(file) != meta.get("sha256"):
            raise ArtifactError(f"artifact {version}: file {name} is corrupt (sha256 mismatch)")
    return ArtifactVersion(version, path, manifest)


def open_current(root: Path) -> ArtifactVersion:
    return open_version(root, current_version_name(root))


Loader = Callable[[ArtifactVersion], Awaitable[None]]
Unloader = Callable[[str], None]


class ArtifactWatcher:
    """Loads CURRENT at start and again whenever it changes; a version that fails stays refused.

    `loader` must build the new state completely and swap it in only at the end, so a failed load leaves
    the previous version serving.
    """

    def __init__(
        self,
        root: Path,
        loader: Loader,
        pin: Loader | None = None,
        unpin: Unloader | None = None,
    ) -> None:
        self.root = root
        self.loader = loader
        self.loaded: str | None = None
        self._refused: str | None = None
        #: Versions of PINNED served beside CURRENT (`pin` loads one, `unpin` drops one).
        self.pin = pin
        self.unpin = unpin
        self.pinned: set[str] = set()
        self._pinned_listing: tuple[str, ...] | None = None

    async def check(self) -> bool:
        """Load CURRENT if it names a new version; True when a version is loaded (new or old)."""
        await self.check_pinned()
        return await self._check_current()

    async def check_pinned(self) -> None:
        """Load the versions PINNED newly lists, drop the ones it no longer lists. A version that fails
        its checks is refused (logged) and not retried until PINNED changes; the others serve."""
        if self.pin is None:
            return
        try:
            listing = tuple(pinned_version_names(self.root))
        except (ArtifactError, OSError) as e:
            if self._pinned_listing != ():
                log.error(
                    "pinned versions unreadable", extra={"reason": str(e), "serving": sorted(self.pinned)}
                )
            self._pinned_listing = ()
            return
        if listing == self._pinned_listing:
            return
        self._pinned_listing = listing
        for name in sorted(self.pinned - set(listing)):
            if self.unpin is not None:
                self.unpin(name)
            self.pinned.discard(name)
            log.info("pinned artifact version dropped", extra={"version": name})
        for name in listing:
            if name in self.pinned:
                continue
            try:
                version = await asyncio.to_thread(open_version, self.root, name)
                await self.pin(version)
            except Exception as e:  # this pinned version is refused; the others keep serving
                log.error("pinned artifact version refused", extra={"version": name, "reason": str(e)})
                continue
            self.pinned.add(name)
            log.info("pinned artifact version loaded", extra={"version": name})

    async def _check_current(self) -> bool:
        try:
            name = current_version_name(self.root)
        except ArtifactError as e:
            self._refuse(str(e))
            return self.loaded is not None
        if name in (self.loaded, self._refused):
            return self.loaded is not None
        try:
            version = await asyncio.to_thread(open_version, self.root, name)
            await self.loader(version)
        except Exception as e:  # any failure refuses this version; the old one keeps serving
            self._refused = name
            log.error(
                "artifact version refused",
                extra={"version": name, "reason": str(e), "serving": self.loaded},
            )
            return self.loaded is not None
        log.info("artifact version loaded", extra={"version": name, "previous": self.loaded})
        self.loaded = name
        self._refused = None
        return True

    def _refuse(self, reason: str) -> None:
        if self._refused != reason:
            self._refused = reason
            log.error("artifacts unavailable", extra={"reason": reason, "serving": self.loaded})

    async def reload(self, on_loaded: Callable[[], None]) -> None:
        """One poll (run every few seconds by the server): call `on_loaded` when a new CURRENT loaded."""
        before = self.loaded
        if await self.check() and self.loaded != before:
            on_loaded()
