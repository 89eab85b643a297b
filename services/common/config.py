"""Typed service configuration from flags and `RECSYS_*` environment variables (12-factor).

Each service declares a frozen dataclass; every field becomes a flag `--field-name` and an environment
variable `RECSYS_FIELD_NAME`. A flag beats the environment, which beats the default. Values are parsed
by the field's type and checked by the `check` in its metadata, and a bad one stops start-up with one
line that names the flag and the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "RECSYS_"

T = TypeVar("T")
Check = Callable[[Any], str | None]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the flag and the variable."""


def option(default: Any, help: str, check: Check | None = None) -> Any:
    """A config field: its default, its help text, and an optional check returning an error or None."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def port_number(value: int) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port in 1..65535"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _base_type(tp: Any) -> Any:
    """`int | None` -> int; `Path` -> Path."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _parse(raw: str, tp: Any) -> Any:
    base = _base_type(tp)
    if raw == "" and base is not str:
        return None
    if base is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    if base in (int, float, str, Path):
        return base(raw)
    raise TypeError(f"unsupported config type {tp}")


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per field of the config dataclass `cls` (values stay strings until `load`)."""
    for f in dataclasses.fields(cls):
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')} [env {env_name(f.name)}; default {f.default!r}]",
        )


def load(
    cls: type[T], flags: Mapping[str, Any] | argparse.Namespace, env: Mapping[str, str] | None = None
) -> T:
    """Build `cls` from parsed flags and the environment; raise ConfigError naming the bad field."""
    env = os.environ if env is None else env
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = given.get(f.name)
        source = flag_name(f.name)
        if raw is None and env_name(f.name) in env:
            raw, source = env[env_name(f.name)], env_name(f.name)
        if raw is None:
            value = f.default
        elif isinstance(raw, str):
            try:
                value = _parse(raw, hints[f.name])
            except ValueError as e:
                raise ConfigError(f"{source}: {e}") from e
        else:
            value = raw
        check: Check | None = f.metadata.get("check")
        if value is not None and check is not None and (problem := check(value)):
            raise ConfigError(f"{source}={value}: {problem}")
        values[f.name] = value
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def parse(
    cls: type[T], argv: Sequence[str], env: Mapping[str, str] | None = None, prog: str | None = None
) -> T:
    """Parse `argv` (flags only) into `cls`: what `recsys serve NAME ...` uses."""
    parser = argparse.ArgumentParser(prog=prog or cls.__name__, exit_on_error=False)
    add_arguments(parser, cls)
    try:
        namespace, unknown = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise ConfigError(str(e)) from e
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}")
    return load(cls, namespace, env)
