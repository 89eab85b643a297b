"""A/B assignment: a stable hash of (salt, user id) into 10,000 buckets, split among arms by weight.

The experiments file (YAML) lists experiments; each assigns every user to exactly one of its arms, and
an arm's `overrides` change the pipeline for that user:

    experiments:
      - id: candidates
        salt: candidates-2026-11
        arms:
          - {name: control, weight: 50}
          - {name: fewer_candidates, weight: 50, overrides: {candidates: 200}}

Overrides: `candidates` (how many items retrieval returns for ranking, 1..2000) and `ranking` (false
serves retrieval order). The same user id always lands in the same arm, in every gateway replica.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.config import ConfigError

BUCKETS = 10_000
DEFAULT_FILE = Path(__file__).with_name("experiments.yaml")


@dataclass(frozen=True)
class Overrides:
    candidates: int | None = None
    ranking: bool | None = None


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    overrides: Overrides = field(default_factory=Overrides)


@dataclass(frozen=True)
class Experiment:
    id: str
    salt: str
    arms: tuple[Arm, ...]

    def bucket(self, user_id: str) -> int:
        digest = hashlib.sha256(f"{self.salt}:{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def assign(self, user_id: str) -> Arm:
        point = self.bucket(user_id) / BUCKETS * sum(a.weight for a in self.arms)
        for arm in self.arms:
            if point < arm.weight:
                return arm
            point -= arm.weight
        return self.arms[-1]


@dataclass(frozen=True)
class Settings:
    """The pipeline settings for one request, after the arms' overrides."""

    candidates: int
    ranking: bool = True


def assign(experiments: tuple[Experiment, ...], user_id: str) -> list[tuple[Experiment, Arm]]:
    return [(e, e.assign(user_id)) for e in experiments]


def settings_for(assignments: list[tuple[Experiment, Arm]], default_candidates: int) -> Settings:
    settings = Settings(candidates=default_candidates)
    for _, arm in assignments:
        o = arm.overrides
        settings = Settings(
            candidates=o.candidates if o.candidates is not None else settings.candidates,
            ranking=o.ranking if o.ranking is not None else settings.ranking,
        )
    return settings


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {problem}")


def _overrides(raw: Any, where: str) -> Overrides:
    raw = {} if raw is None else raw
    _require(isinstance(raw, dict), where, "must be a mapping")
    unknown = set(raw) - {"candidates", "ranking"}
    _require(not unknown, where, f"unknown override(s) {sorted(unknown)}; known: candidates, ranking")
    candidates = raw.get("candidates")
    if candidates is not None:
        _require(
            isinstance(candidates, int) and not isinstance(candidates, bool) and 1 <= candidates <= 2000,
            f"{where}.candidates",
            f"must be an integer in 1..2000, got {candidates!r}",
        )
    ranking = raw.get("ranking")
    _require(
        ranking is None or isinstance(ranking, bool),
        f"{where}.ranking",
        f"must be true/false, got {ranking!r}",
    )
    return Overrides(candidates=candidates, ranking=ranking)


def parse(document: Any, source: str) -> tuple[Experiment, ...]:
    """Validate an experiments document; ConfigError names the file and the field."""
    _require(
        isinstance(document, dict) and isinstance(document.get("experiments"), list),
        source,
        "must be a mapping with a list `experiments`",
    )
    experiments: list[Experiment] = []
    for i, raw in enumerate(document["experiments"]):
        where = f"{source}: experiments[{i}]"
        _require(isinstance(raw, dict), where, "must be a mapping")
        exp_id, salt, arms_raw = raw.get("id"), raw.get("salt"), raw.get("arms")
        _require(isinstance(exp_id, str) and bool(exp_id), f"{where}.id", "must be a non-empty string")
        _require(isinstance(salt, str) and bool(salt), f"{where}.salt", "must be a non-empty string")
        _require(
            isinstance(arms_raw, list) and len(arms_raw) >= 1, f"{where}.arms", "must list at least one arm"
        )
        arms: list[Arm] = []
        for j, arm in enumerate(arms_raw):
            at = f"{where}.arms[{j}]"
            _require(isinstance(arm, dict), at, "must be a mapping")
            name, weight = arm.get("name"), arm.get("weight")
            _require(isinstance(name, str) and bool(name), f"{at}.name", "must be a non-empty string")
            _require(
                isinstance(weight, int | float) and not isinstance(weight, bool) and weight > 0,
                f"{at}.weight",
                f"must be a number > 0, got {weight!r}",
            )
            arms.append(Arm(name, float(weight), _overrides(arm.get("overrides"), f"{at}.overrides")))
        names = [a.name for a in arms]
        _require(len(set(names)) == len(names), f"{where}.arms", f"arm names repeat: {names}")
        experiments.append(Experiment(exp_id, salt, tuple(arms)))
    ids = [e.id for e in experiments]
    _require(len(set(ids)) == len(ids), source, f"experiment ids repeat: {ids}")
    return tuple(experiments)


def load(path: Path) -> tuple[Experiment, ...]:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return parse(document, path.name)
