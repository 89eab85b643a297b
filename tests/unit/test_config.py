from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.config import ConfigError, option, parse, port_number, positive
from services.common.server import ServerConfig


@dataclass(frozen=True)
class Example(ServerConfig):
    port: int = option(50099, "port", port_number)
    redis_url: str | None = option(None, "redis")
    timeout_ms: float = option(100.0, "timeout", positive)
    debug: bool = option(False, "debug")


def test_defaults_env_and_flags_in_that_order() -> None:
    assert parse(Example, [], env={}) == Example()
    env = {"RECSYS_PORT": "6000", "RECSYS_REDIS_URL": "redis://x:1/0", "RECSYS_DEBUG": "yes"}
    from_env = parse(Example, [], env=env)
    assert (from_env.port, from_env.redis_url, from_env.debug) == (6000, "redis://x:1/0", True)
    from_flags = parse(Example, ["--port", "7000", "--artifacts-dir", "/a"], env=env)
    assert from_flags.port == 7000 and from_flags.artifacts_dir == Path("/a")


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--port", "abc"], {}, "--port"),
        (["--port", "70000"], {}, "--port=70000"),
        ([], {"RECSYS_TIMEOUT_MS": "-1"}, "RECSYS_TIMEOUT_MS=-1.0"),
        ([], {"RECSYS_DEBUG": "maybe"}, "RECSYS_DEBUG"),
        (["--no-such-flag", "1"], {}, "--no-such-flag"),
    ],
)
def test_bad_values_name_the_flag_or_variable(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(Example, argv, env=env)
    assert named in str(caught.value)
