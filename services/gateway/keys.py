"""The gateway's API keys file: who may call it, and with which roles. `recsys keys add` writes it.

    # recsys gateway API keys (`recsys keys add` / `recsys keys remove`): names, roles, key hashes
    keys:
      - name: backend-1                 # in logs and metrics (never the key); [A-Za-z0-9._-], 1..64
        sha256: 9f86d081884c7d65...     # hex SHA-256 of the key, never the key itself
        roles: [recommend, feedback]    # recommend, feedback, admin
        created: 2026-11-27T10:00:00Z   # optional, written by `recsys keys add`
        rate_per_s: 50                  # optional: calls per second per gateway (RESOURCE_EXHAUSTED past it)
        burst: 100                      # optional: calls allowed at once (default: the rate, at least 1)

A key is `rsk_` + 43 URL-safe base64 characters: 256 random bits from the OS. The file stores an unsalted
SHA-256 of it, and that is enough. Salts and slow hashes (bcrypt, argon2) protect *low-entropy* secrets
such as passwords from dictionary and rainbow-table attacks; a 256-bit random key has no dictionary, and
inverting SHA-256 on it is a 2^256 search. A fast hash also lets the gateway find a presented key by its
hash in a dict, one cheap hash per call, instead of a slow KDF per call and per stored key. (GitHub's
and PyPI's API tokens are stored the same way.) The prefix makes a leaked key easy for secret scanners
to recognise.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.config import ConfigError

#: recommend: Recommend; feedback: Feedback; admin: the catalogue and operator RPCs (none yet; a
#: gateway RPC the role map does not name needs it). A key holds only the roles it lists.
ROLES = ("recommend", "feedback", "admin")
PREFIX = "rsk_"
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FIELDS = ("name", "sha256", "roles", "created", "rate_per_s", "burst")
HEADER = "# recsys gateway API keys (`recsys keys add` / `recsys keys remove`): names, roles, key hashes\n"


class KeyFileError(ConfigError):
    """A keys file the gateway cannot use; the message names the file and the field."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    roles: tuple[str, ...]
    created: str | None = None
    #: Calls per second this key may make at one gateway (None: no limit), and how many at once.
    rate_per_s: float | None = None
    burst: int | None = None

    @property
    def bucket_size(self) -> int:
        return self.burst or max(1, math.ceil(self.rate_per_s or 1))

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "roles": list(self.roles)}
        if self.created:
            entry["created"] = self.created
        if self.rate_per_s is not None:
            entry["rate_per_s"] = self.rate_per_s
        if self.burst is not None:
            entry["burst"] = self.burst
        return entry


def generate() -> str:
    """A new key (256 random bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """What the file stores and the gateway looks a presented key up by."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_roles(roles: Any, where: str) -> tuple[str, ...]:
    """Roles as given (a non-empty list of distinct known roles), or KeyFileError naming `where`."""
    if not isinstance(roles, list) or not roles:
        raise KeyFileError(f"{where}: expected a non-empty list of roles ({', '.join(ROLES)})")
    for i, role in enumerate(roles):
        if role not in ROLES:
            raise KeyFileError(f"{where}[{i}]: unknown role {role!r} (expected {', '.join(ROLES)})")
        if role in roles[:i]:
            raise KeyFileError(f"{where}[{i}]: role {role!r} listed twice")
    return tuple(roles)


def _entry(raw: Any, where: str) -> ApiKey:
    if not isinstance(raw, dict):
        raise KeyFileError(f"{where}: expected a mapping with name, sha256 and roles")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise KeyFileError(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(FIELDS)})")
    for required in ("name", "sha256", "roles"):
        if required not in raw:
            raise KeyFileError(f"{where}: missing {required}")
    name, sha256, created = raw["name"], raw["sha256"], raw.get("created")
    if not isinstance(name, str) or not NAME.match(name):
        raise KeyFileError(f"{where}.name: {name!r} is not 1..64 of A-Z a-z 0-9 . _ -")
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        raise KeyFileError(
            f"{where}.sha256: expected 64 lowercase hex digits, the SHA-256 of the key (never the key itself)"
        )
    if created is not None and not isinstance(created, str):
        raise KeyFileError(f"{where}.created: expected a string (an ISO 8601 time)")
    rate, burst = raw.get("rate_per_s"), raw.get("burst")
    check_rate(rate, burst, where)
    return ApiKey(
        name,
        sha256,
        check_roles(raw["roles"], f"{where}.roles"),
        created,
        None if rate is None else float(rate),
        burst,
    )


def check_rate(rate: Any, burst: Any, where: str) -> None:
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1e6
    ):
        raise KeyFileError(f"{where}.rate_per_s: expected a number in (0, 1000000], got {rate!r}")
    if burst is not None:
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 1_000_000:
            raise KeyFileError(f"{where}.burst: expected a whole number in 1..1000000, got {burst!r}")
        if rate is None:
            raise KeyFileError(f"{where}.burst: only with rate_per_s")


def parse(document: Any, source: str) -> list[ApiKey]:
    """Validate a keys document; KeyFileError names `source` and the field."""
    if not isinstance(document, dict) or set(document) != {"keys"}:
        raise KeyFileError(f"{source}: expected a mapping with one field, keys (a list)")
    entries = document["keys"]
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise KeyFileError(f"{source}: keys: expected a list")
    out: list[ApiKey] = []
    names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for i, raw in enumerate(entries):
        key = _entry(raw, f"{source}: keys[{i}]")
        if key.name in names:
            raise KeyFileError(f"{source}: keys[{i}].name: {key.name!r} is already keys[{names[key.name]}]")
        if key.sha256 in hashes:
            raise KeyFileError(f"{source}: keys[{i}].sha256: the same key as keys[{hashes[key.sha256]}]")
        names[key.name] = hashes[key.sha256] = i
        out.append(key)
    return out


def load(path: Path) -> list[ApiKey]:
    try:
        text = path.read_text()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read ({e.strerror})") from e
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KeyFileError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    return parse(document, str(path))


def dump(keys: list[ApiKey]) -> str:
    return HEADER + yaml.safe_dump(
        {"keys": [k.to_dict() for k in keys]}, sort_keys=False, default_flow_style=None
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, so a reader (the gateway polling it) sees the old file or
    the new one, never half of one. An existing file keeps its mode; a new one is readable by all like
    any config file: it holds hashes only, and the gateway may run as another user (Compose's bind mount)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _existing(path: Path) -> list[ApiKey]:
    return load(path) if path.exists() else []


def add(
    path: Path, name: str, roles: list[str], rate_per_s: float | None = None, burst: int | None = None
) -> str:
    """Append a new key named `name` to the file (created if missing); returns the key, which is stored
    nowhere: the caller shows it once."""
    if not path.parent.is_dir():
        raise KeyFileError(f"{path.parent}: no such directory")
    keys = _existing(path)
    if not NAME.match(name):
        raise KeyFileError(f"--name: {name!r} is not 1..64 of A-Z a-z 0-9 . _ -")
    if any(k.name == name for k in keys):
        raise KeyFileError(f"{path}: a key named {name!r} exists already (remove it first to replace it)")
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise KeyFileError(
            f"--role: {f'unknown role {unknown[0]!r}' if unknown else 'give at least one'}"
            f" (expected {', '.join(ROLES)})"
        )
    check_rate(rate_per_s, burst, "--rate-per-s/--burst")
    key = generate()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    keys.append(ApiKey(name, digest(key), tuple(dict.fromkeys(roles)), created, rate_per_s, burst))
    write_atomically(path, dump(keys))
    return key


def remove(path: Path, name: str) -> None:
    """Drop the key named `name`: a gateway watching the file refuses it from its next poll."""
    if not path.exists():
        raise KeyFileError(f"{path}: no such file")
    keys = load(path)
    kept = [k for k in keys if k.name != name]
    if len(kept) == len(keys):
        raise KeyFileError(
            f"{path}: no key named {name!r} (keys: {', '.join(k.name for k in keys) or 'none'})"
        )
    write_atomically(path, dump(kept))
