"""Layered A/B assignment (Google's overlapping-experiments design) from a YAML file, hot-reloaded.

    holdout: {salt: holdout-2026, fraction: 0.02}   # optional: these users get no experiment at all
    qa:                                              # optional: forced arms for QA
      users: {qa-alice: {ranker: v2}}                # always, for these user ids
      allow: [qa-bob]                                # may force arms per request (context/metadata)
    experiments:
      - id: ranker                                   # unique; the report's --experiment
        layer: ranking                               # default: the id (a layer of its own)
        salt: ranker-2026-11                         # the arm hash; change it to reshuffle
        traffic: 1.0                                 # share of the layer's users, 0..1 (default 1)
        offset: 0.0                                  # where its range starts in the layer (default: packed)
        arms:                                        # the FIRST arm is the control
          - {name: control, weight: 50}              # weights are percent of the experiment, sum 100
          - {name: v2, weight: 50, overrides: {version: 20261127T..., candidates: 200}}

Hashing: `h(salt, user) = blake2b(salt:user, 8 bytes)` as a big-endian 64-bit integer, `% 10_000` buckets.
* Layers: the user's layer bucket is h("layer:" + layer, user). Each experiment of a layer owns a disjoint
  bucket range [offset, offset + traffic), so a user is in at most one experiment per layer (mutual
  exclusion) while layers hash independently of each other (independence).
* Arms: the arm bucket is h(experiment salt, user), independent of the layer bucket. With T treatments,
  treatment j owns the arm buckets b with b % T == j and b // T < weight_j * 100 (a "stripe" of its own);
  the control owns every other bucket. Raising a treatment's weight therefore only adds buckets of its
  own stripe, all of which were control: users move from control into it, never between treatments.
  The price: a treatment may take at most 100/T percent. Adding or removing a treatment re-stripes the
  arms (change the salt, it is a new experiment).
* Holdout: h(holdout salt, user) < fraction: the user is in no experiment; every user gets the
  pseudo-experiment `holdout` (arms `holdout` / `exposed`), so its effect can be reported too.

Overrides (each parameter belongs to ONE layer, so arms of different layers never fight over it):
`version` (the artifact version the whole pipeline uses, features + retrieval + ranking, listed in
<artifacts>/PINNED), `candidates` (1..2000), `ranking` (false: retrieval order), `interleave` (a second
artifact version: the response is a team-draft interleaving of the arm's pipeline and that version's),
`sources` (the retrieval sources allowed to run, a non-empty subset of services.common.sources.SOURCE_NAMES;
sources the served version lacks are skipped), `diversity` (the
MMR lambda in (0, 1) the ranker re-ranks with; unset = relevance alone).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.config import ConfigError
from services.common.sources import SOURCE_NAMES
from services.common.watched import WatchedFile

BUCKETS = 10_000
DEFAULT_FILE = Path(__file__).with_name("experiments.yaml")
HOLDOUT = "holdout"
HOLDOUT_ARMS = ("holdout", "exposed")
#: Request context key / gRPC metadata header a QA user forces arms with: "exp=arm[,exp=arm]".
FORCE_KEY = "x-recsys-force-arms"
OVERRIDE_KEYS = ("version", "candidates", "ranking", "interleave", "sources", "diversity")


def hash64(salt: str, user_id: str) -> int:
    """The stable 64-bit hash of (salt, user id): the same in every process, replica and release."""
    return int.from_bytes(hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest(), "big")


def bucket(salt: str, user_id: str) -> int:
    return hash64(salt, user_id) % BUCKETS


@dataclass(frozen=True)
class Overrides:
    version: str | None = None
    candidates: int | None = None
    ranking: bool | None = None
    interleave: str | None = None
    sources: tuple[str, ...] | None = None
    diversity: float | None = None

    def items(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OVERRIDE_KEYS if getattr(self, k) is not None}


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
    layer: str = ""
    #: The experiment's layer buckets: [start, stop).
    start: int = 0
    stop: int = BUCKETS

    @property
    def layer_salt(self) -> str:
        return f"layer:{self.layer or self.id}"

    @property
    def traffic(self) -> float:
        return (self.stop - self.start) / BUCKETS

    def in_traffic(self, layer_bucket: int) -> bool:
        return self.start <= layer_bucket < self.stop

    def arm_of_bucket(self, arm_bucket: int) -> Arm:
        treatments = self.arms[1:]
        if treatments:
            t = len(treatments)
            j = arm_bucket % t
            if arm_bucket // t < round(treatments[j].weight * BUCKETS / 100):
                return treatments[j]
        return self.arms[0]

    def assign(self, user_id: str) -> Arm:
        """The user's arm, were they in this experiment's traffic."""
        return self.arm_of_bucket(bucket(self.salt, user_id))

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)


@dataclass(frozen=True)
class Holdout:
    salt: str
    fraction: float
    id: str = HOLDOUT

    def holds(self, user_id: str) -> bool:
        return bucket(self.salt, user_id) < round(self.fraction * BUCKETS)


@dataclass(frozen=True)
class Config:
    experiments: tuple[Experiment, ...] = ()
    holdout: Holdout | None = None
    qa_users: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    qa_allow: frozenset[str] = frozenset()

    def by_id(self, experiment_id: str) -> Experiment | None:
        return next((e for e in self.experiments if e.id == experiment_id), None)


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: Arm
    #: Forced by QA (allowlist or header): served, but never logged as an exposure.
    forced: bool = False


_HOLDOUT_ARMS = {name: Arm(name, 0.0) for name in HOLDOUT_ARMS}


def parse_forced(text: str) -> dict[str, str]:
    """'exp=arm,exp2=arm2' -> {exp: arm}; malformed pairs are ignored."""
    out: dict[str, str] = {}
    for pair in text.split(","):
        exp, sep, arm = pair.partition("=")
        if sep and exp.strip() and arm.strip():
            out[exp.strip()] = arm.strip()
    return out


def assign(config: Config, user_id: str, forced: Mapping[str, str] | None = None) -> list[Assignment]:
    """Every (experiment, arm) the user is in, holdout first. `forced` (from the request) is honoured only
    for users on the QA allowlist; the file's `qa.users` always are."""
    force = dict(config.qa_users.get(user_id, {}))
    if forced and user_id in config.qa_allow:
        force.update(forced)
    out: list[Assignment] = []
    held = False
    if config.holdout is not None:
        held = config.holdout.holds(user_id)
        out.append(Assignment(config.holdout.id, _HOLDOUT_ARMS[HOLDOUT_ARMS[0 if held else 1]]))
    layer_buckets: dict[str, int] = {}
    for exp in config.experiments:
        if exp.id in force and (arm := exp.arm(force[exp.id])) is not None:
            out.append(Assignment(exp.id, arm, forced=True))
            continue
        if held:
            continue
        salt = exp.layer_salt
        if salt not in layer_buckets:
            layer_buckets[salt] = bucket(salt, user_id)
        if exp.in_traffic(layer_buckets[salt]):
            out.append(Assignment(exp.id, exp.assign(user_id)))
    return out


@dataclass(frozen=True)
class Settings:
    """The pipeline settings for one request, after the arms' overrides."""

    #: Candidates retrieval returns (0 = as many as the served version was trained with).
    candidates: int
    ranking: bool = True
    #: Artifact version of every stage ("" = CURRENT).
    version: str = ""
    #: Second version to team-draft interleave with ("" = none).
    interleave: str = ""
    #: Retrieval sources allowed (empty = all).
    sources: tuple[str, ...] = ()
    #: MMR lambda for the ranker (0 = relevance alone).
    diversity: float = 0.0


def settings_for(assignments: list[Assignment], default_candidates: int) -> Settings:
    values: dict[str, Any] = {"candidates": default_candidates}
    for a in assignments:
        values.update(a.arm.overrides.items())
    return Settings(**values)


# ---- parsing ------------------------------------------------------------------------------------


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {problem}")


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _version_name(value: Any) -> bool:
    return _nonempty_str(value) and "/" not in value and not value.startswith(".")


def _overrides(raw: Any, where: str) -> Overrides:
    raw = {} if raw is None else raw
    _require(isinstance(raw, dict), where, "must be a mapping")
    unknown = set(raw) - set(OVERRIDE_KEYS)
    _require(not unknown, where, f"unknown override(s) {sorted(unknown)}; known: {', '.join(OVERRIDE_KEYS)}")
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
    for key in ("version", "interleave"):
        value = raw.get(key)
        _require(
            value is None or _version_name(value),
            f"{where}.{key}",
            f"must name an artifact version (a directory under the artifact root), got {value!r}",
        )
    sources = raw.get("sources")
    if sources is not None:
        _require(
            isinstance(sources, list)
            and bool(sources)
            and all(isinstance(s, str) for s in sources)
            and len(set(sources)) == len(sources),
            f"{where}.sources",
            f"must be a non-empty list of distinct source names, got {sources!r}",
        )
        strangers = sorted(set(sources) - set(SOURCE_NAMES))
        _require(
            not strangers,
            f"{where}.sources",
            f"unknown source(s) {strangers}; known: {', '.join(SOURCE_NAMES)}",
        )
        sources = tuple(sources)
    diversity = raw.get("diversity")
    _require(
        diversity is None or (_number(diversity) and 0 < diversity < 1),
        f"{where}.diversity",
        f"must be an MMR lambda in (0, 1), got {diversity!r}",
    )
    return Overrides(
        version=raw.get("version"),
        candidates=candidates,
        ranking=ranking,
        interleave=raw.get("interleave"),
        sources=sources,
        diversity=None if diversity is None else float(diversity),
    )


def _fraction(raw: Any, where: str, default: float) -> float:
    value = default if raw is None else raw
    _require(_number(value) and 0 <= value <= 1, where, f"must be a number in 0..1, got {value!r}")
    return float(value)


def _experiment(raw: Any, where: str, layer_end: dict[str, int]) -> Experiment:
    _require(isinstance(raw, dict), where, "must be a mapping")
    known = {"id", "layer", "salt", "traffic", "offset", "arms", "description"}
    unknown = set(raw) - known
    _require(not unknown, where, f"unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    exp_id, salt, arms_raw = raw.get("id"), raw.get("salt"), raw.get("arms")
    _require(_nonempty_str(exp_id), f"{where}.id", "must be a non-empty string")
    _require(exp_id != HOLDOUT, f"{where}.id", f"{HOLDOUT!r} is reserved for the global holdout")
    _require(_nonempty_str(salt), f"{where}.salt", "must be a non-empty string")
    layer = raw.get("layer", exp_id)
    _require(_nonempty_str(layer), f"{where}.layer", "must be a non-empty string")
    traffic = _fraction(raw.get("traffic"), f"{where}.traffic", 1.0)
    offset_raw = raw.get("offset")
    start = (
        layer_end.get(layer, 0)
        if offset_raw is None
        else round(_fraction(offset_raw, f"{where}.offset", 0.0) * BUCKETS)
    )
    stop = start + round(traffic * BUCKETS)
    _require(
        stop <= BUCKETS,
        f"{where}.traffic",
        f"the experiment's range [{start / BUCKETS:g}, {stop / BUCKETS:g}) runs past the end of layer "
        f"{layer!r} (the experiments of one layer share its users)",
    )
    _require(isinstance(arms_raw, list) and len(arms_raw) >= 1, f"{where}.arms", "must list at least one arm")
    arms: list[Arm] = []
    for j, arm in enumerate(arms_raw):
        at = f"{where}.arms[{j}]"
        _require(isinstance(arm, dict), at, "must be a mapping")
        unknown = set(arm) - {"name", "weight", "overrides"}
        _require(not unknown, at, f"unknown key(s) {sorted(unknown)}; known: name, weight, overrides")
        name, weight = arm.get("name"), arm.get("weight")
        _require(_nonempty_str(name), f"{at}.name", "must be a non-empty string")
        _require(_number(weight) and weight > 0, f"{at}.weight", f"must be a number > 0, got {weight!r}")
        arms.append(Arm(name, float(weight), _overrides(arm.get("overrides"), f"{at}.overrides")))
    names = [a.name for a in arms]
    _require(len(set(names)) == len(names), f"{where}.arms", f"arm names repeat: {names}")
    total = sum(a.weight for a in arms)
    _require(
        abs(total - 100) < 1e-6,
        f"{where}.arms",
        f"weights are percent of the experiment and must sum to 100, got {total:g}",
    )
    treatments = len(arms) - 1
    for j, arm in enumerate(arms[1:], start=1):
        _require(
            arm.weight <= 100 / treatments + 1e-9,
            f"{where}.arms[{j}].weight",
            f"a treatment may take at most 100/{treatments} = {100 / treatments:g} percent (each treatment "
            "has a stripe of its own, so ramps move users from control only), got "
            f"{arm.weight:g}",
        )
    return Experiment(exp_id, salt, tuple(arms), layer=layer, start=start, stop=stop)


def parse(document: Any, source: str) -> Config:
    """Validate an experiments document; ConfigError names the file and the field."""
    _require(
        isinstance(document, dict) and isinstance(document.get("experiments"), list),
        source,
        "must be a mapping with a list `experiments`",
    )
    unknown = set(document) - {"experiments", "holdout", "qa"}
    _require(not unknown, source, f"unknown key(s) {sorted(unknown)}; known: experiments, holdout, qa")
    layer_end: dict[str, int] = {}
    ranges: dict[str, list[tuple[int, int, str]]] = {}
    owner: dict[str, str] = {}
    experiments: list[Experiment] = []
    for i, raw in enumerate(document["experiments"]):
        where = f"{source}: experiments[{i}]"
        exp = _experiment(raw, where, layer_end)
        for start, stop, other in ranges.get(exp.layer, []):
            _require(
                exp.stop <= start or exp.start >= stop or exp.start == exp.stop,
                f"{where}.offset",
                f"range [{exp.start / BUCKETS:g}, {exp.stop / BUCKETS:g}) overlaps experiment {other!r} of "
                f"layer {exp.layer!r}",
            )
        ranges.setdefault(exp.layer, []).append((exp.start, exp.stop, exp.id))
        layer_end[exp.layer] = max(layer_end.get(exp.layer, 0), exp.stop)
        for j, arm in enumerate(exp.arms):
            for key in arm.overrides.items():
                layer = owner.setdefault(key, exp.layer)
                _require(
                    layer == exp.layer,
                    f"{where}.arms[{j}].overrides.{key}",
                    f"already varied in layer {layer!r}; a parameter belongs to one layer",
                )
        experiments.append(exp)
    ids = [e.id for e in experiments]
    _require(len(set(ids)) == len(ids), source, f"experiment ids repeat: {ids}")

    holdout: Holdout | None = None
    raw_holdout = document.get("holdout")
    if raw_holdout is not None:
        where = f"{source}: holdout"
        _require(isinstance(raw_holdout, dict), where, "must be a mapping with salt and fraction")
        _require(_nonempty_str(raw_holdout.get("salt")), f"{where}.salt", "must be a non-empty string")
        fraction = _fraction(raw_holdout.get("fraction"), f"{where}.fraction", -1.0)
        _require(fraction < 0.5, f"{where}.fraction", f"must be below 0.5, got {fraction:g}")
        holdout = Holdout(raw_holdout["salt"], fraction)

    qa_users: dict[str, dict[str, str]] = {}
    qa_allow: frozenset[str] = frozenset()
    raw_qa = document.get("qa")
    if raw_qa is not None:
        where = f"{source}: qa"
        _require(isinstance(raw_qa, dict), where, "must be a mapping with users and/or allow")
        users = raw_qa.get("users") or {}
        _require(isinstance(users, dict), f"{where}.users", "must map user ids to {experiment: arm}")
        by_id = {e.id: e for e in experiments}
        for user, forced in users.items():
            at = f"{where}.users.{user}"
            _require(isinstance(forced, dict), at, "must map experiment ids to arm names")
            for exp_id, arm in forced.items():
                target = by_id.get(str(exp_id))
                _require(target is not None, f"{at}.{exp_id}", "names no experiment of this file")
                assert target is not None
                _require(target.arm(str(arm)) is not None, f"{at}.{exp_id}", f"experiment has no arm {arm!r}")
            qa_users[str(user)] = {str(k): str(v) for k, v in forced.items()}
        allow = raw_qa.get("allow") or []
        _require(
            isinstance(allow, list) and all(_nonempty_str(u) for u in allow),
            f"{where}.allow",
            "must be a list of user ids",
        )
        qa_allow = frozenset(str(u) for u in allow)
    return Config(tuple(experiments), holdout, qa_users, qa_allow)


def load(path: Path) -> Config:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return parse(document, path.name)


class Reloader(WatchedFile[Config]):
    """The experiments config, reloaded when the file changes; a file that fails validation is refused
    with the field named in the log, and the previous config keeps serving."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, load, "experiments", lambda c: {"experiments": [e.id for e in c.experiments]})

    @property
    def config(self) -> Config:
        return self.value
