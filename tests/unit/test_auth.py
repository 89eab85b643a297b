"""The gateway's keys file and its decisions: the format and its errors, the role map held to the proto,
who is refused with which status, rotation, and the start-up rules for running without keys."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from recsys.v1 import gateway_pb2
from services.common import config
from services.gateway import auth, keys
from services.gateway.service import Config

HASH = "a" * 64


def write(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def entry(name: str = "backend-1", sha256: str = HASH, roles: Any = ("recommend",)) -> dict[str, Any]:
    return {"name": name, "sha256": sha256, "roles": list(roles)}


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


# --- the file ------------------------------------------------------------------------------------------


def test_a_valid_file_parses() -> None:
    parsed = keys.parse(
        {
            "keys": [
                entry(),
                {**entry("b", "b" * 64, ["feedback", "admin"]), "created": "2026-01-01T00:00:00Z"},
            ]
        },
        "k.yaml",
    )
    assert [(k.name, k.roles, k.created) for k in parsed] == [
        ("backend-1", ("recommend",), None),
        ("b", ("feedback", "admin"), "2026-01-01T00:00:00Z"),
    ]
    assert keys.parse({"keys": []}, "k.yaml") == keys.parse({"keys": None}, "k.yaml") == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "k.yaml: expected a mapping with one field, keys"),
        ({"keys": [], "extra": 1}, "k.yaml: expected a mapping with one field, keys"),
        ({"keys": {"name": "x"}}, "k.yaml: keys: expected a list"),
        ({"keys": ["backend-1"]}, "k.yaml: keys[0]: expected a mapping with name, sha256 and roles"),
        ({"keys": [{"name": "x", "roles": ["recommend"]}]}, "k.yaml: keys[0]: missing sha256"),
        ({"keys": [{**entry(), "key": "plain"}]}, "k.yaml: keys[0]: unknown field 'key'"),
        ({"keys": [entry("has space")]}, "k.yaml: keys[0].name: 'has space' is not 1..64 of"),
        ({"keys": [entry(sha256="rsk_plaintext")]}, "k.yaml: keys[0].sha256: expected 64 lowercase hex"),
        ({"keys": [entry(sha256="A" * 64)]}, "k.yaml: keys[0].sha256: expected 64 lowercase hex"),
        ({"keys": [entry(roles=[])]}, "k.yaml: keys[0].roles: expected a non-empty list of roles"),
        ({"keys": [entry(roles=["root"])]}, "k.yaml: keys[0].roles[0]: unknown role 'root' (expected"),
        (
            {"keys": [entry(roles=["recommend"] * 2)]},
            "k.yaml: keys[0].roles[1]: role 'recommend' listed twice",
        ),
        ({"keys": [entry(), entry(sha256="b" * 64)]}, "k.yaml: keys[1].name: 'backend-1' is already keys[0]"),
        ({"keys": [entry(), entry("other")]}, "k.yaml: keys[1].sha256: the same key as keys[0]"),
        ({"keys": [{**entry(), "created": 5}]}, "k.yaml: keys[0].created: expected a string"),
        ({"keys": [{**entry(), "rate_per_s": 0}]}, "k.yaml: keys[0].rate_per_s: expected a number in (0"),
        ({"keys": [{**entry(), "rate_per_s": "fast"}]}, "k.yaml: keys[0].rate_per_s: expected a number"),
        ({"keys": [{**entry(), "rate_per_s": 5, "burst": 0}]}, "k.yaml: keys[0].burst: expected a whole"),
        ({"keys": [{**entry(), "burst": 5}]}, "k.yaml: keys[0].burst: only with rate_per_s"),
    ],
)
def test_bad_documents_are_refused_naming_the_field(document: Any, message: str) -> None:
    with pytest.raises(keys.KeyFileError) as raised:
        keys.parse(document, "k.yaml")
    assert str(raised.value).startswith(message)


def test_unreadable_or_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("keys: [unclosed\n  - x")
    with pytest.raises(keys.KeyFileError) as raised:
        keys.load(bad)
    assert "not valid YAML" in str(raised.value) and "\n" not in str(raised.value)


def test_add_stores_the_hash_and_remove_revokes(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    first = keys.add(path, "backend-1", ["recommend", "feedback", "recommend"])
    second = keys.add(path, "ops", ["admin"])
    assert first != second and first.startswith(keys.PREFIX) and len(first) == len(keys.PREFIX) + 43
    text = path.read_text()
    assert first not in text and second not in text
    loaded = keys.load(path)
    assert [(k.name, k.sha256, k.roles) for k in loaded] == [
        ("backend-1", keys.digest(first), ("recommend", "feedback")),
        ("ops", keys.digest(second), ("admin",)),
    ]
    assert all(k.created for k in loaded)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    keys.remove(path, "backend-1")
    assert [k.name for k in keys.load(path)] == ["ops"]
    assert not list(tmp_path.glob(".keys.yaml.*")), "no temporary file left behind"


@pytest.mark.parametrize(
    ("name", "roles", "message"),
    [
        ("backend-1", ["recommend"], "a key named 'backend-1' exists already"),
        ("new", ["root"], "--role: unknown role 'root' (expected recommend, feedback, admin)"),
        ("new", [], "--role: give at least one"),
        ("bad name", ["recommend"], "--name: 'bad name' is not 1..64"),
    ],
)
def test_add_refuses_bad_input_and_leaves_the_file_alone(
    tmp_path: Path, name: str, roles: list[str], message: str
) -> None:
    path = tmp_path / "keys.yaml"
    keys.add(path, "backend-1", ["recommend"])
    before = path.read_bytes()
    with pytest.raises(keys.KeyFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        keys.add(path, name, roles)
    assert path.read_bytes() == before


def test_add_to_a_malformed_file_refuses_and_keeps_it(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", {"keys": [entry(roles=["root"])]})
    before = path.read_bytes()
    with pytest.raises(keys.KeyFileError, match=r"keys\[0\].roles\[0\]: unknown role 'root'"):
        keys.add(path, "new", ["recommend"])
    assert path.read_bytes() == before
    with pytest.raises(keys.KeyFileError, match="no such directory"):
        keys.add(tmp_path / "missing" / "keys.yaml", "new", ["recommend"])
    with pytest.raises(keys.KeyFileError, match="no key named 'ghost'"):
        keys.remove(write(tmp_path / "ok.yaml", {"keys": [entry()]}), "ghost")


# --- the role map and the decisions --------------------------------------------------------------------


def test_every_gateway_rpc_has_a_role() -> None:
    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
    methods = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert set(auth.ROLE_OF) == methods
    assert set(auth.ROLE_OF.values()) | {auth.UNMAPPED_ROLE} <= set(keys.ROLES)
    assert auth.ROLE_OF["/recsys.v1.Gateway/Recommend"] == "recommend"
    assert auth.ROLE_OF["/recsys.v1.Gateway/Feedback"] == "feedback"


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    made = {
        name: keys.add(path, name, roles)
        for name, roles in (("reader", ["recommend"]), ("writer", ["feedback"]), ("ops", ["admin"]))
    }
    return path, made


RECOMMEND = "/recsys.v1.Gateway/Recommend"
FEEDBACK = "/recsys.v1.Gateway/Feedback"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION_INFO = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def test_decisions(store: tuple[Path, dict[str, str]]) -> None:
    path, made = store
    authorizer = auth.Authorizer(path)

    def decide(method: str, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str] | None:
        refusal = authorizer.check(method, metadata)
        if refusal is not None:
            for key in made.values():  # never echoed, whatever the refusal
                assert key not in refusal.message
        return None if refusal is None else (refusal.code, refusal.reason)

    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert decide(RECOMMEND, []) == (unauthenticated, "missing")
    assert decide(RECOMMEND, [("x-api-key", made["reader"])]) == (unauthenticated, "missing")
    assert decide(RECOMMEND, [("authorization", made["reader"])]) == (unauthenticated, "malformed")
    assert decide(RECOMMEND, [("authorization", f"Basic {made['reader']}")]) == (unauthenticated, "malformed")
    assert decide(RECOMMEND, [*bearer(made["reader"]), *bearer(made["writer"])]) == (
        unauthenticated,
        "malformed",
    )
    assert decide(RECOMMEND, bearer(keys.generate())) == (unauthenticated, "unknown")
    assert decide(RECOMMEND, bearer(made["reader"])) is None
    assert decide(RECOMMEND, [("authorization", f"bearer  {made['reader']} ")]) is None  # scheme per RFC 7235
    assert decide(FEEDBACK, bearer(made["writer"])) is None
    assert decide(FEEDBACK, bearer(made["reader"])) == (grpc.StatusCode.PERMISSION_DENIED, "role")
    assert decide(RECOMMEND, bearer(made["ops"])) == (grpc.StatusCode.PERMISSION_DENIED, "role")
    # a gateway method the map does not name needs admin
    assert decide("/recsys.v1.Gateway/UpsertItems", bearer(made["reader"])) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "role",
    )
    assert decide("/recsys.v1.Gateway/UpsertItems", bearer(made["ops"])) is None
    # health and reflection are exempt by default
    assert decide(HEALTH_CHECK, []) is None and decide(REFLECTION_INFO, []) is None
    denied = authorizer.check(FEEDBACK, bearer(made["reader"]))
    assert denied is not None and denied.key_name == "reader"
    assert (
        denied.message == "API key 'reader' lacks the 'feedback' role that Feedback needs (it has recommend)"
    )
    missing = authorizer.check(RECOMMEND, [])
    assert missing is not None and "authorization: Bearer <API key>" in missing.message


@pytest.mark.parametrize(("health", "reflection"), [(True, False), (False, True), (True, True)])
def test_health_and_reflection_can_require_any_known_key(
    store: tuple[Path, dict[str, str]], health: bool, reflection: bool
) -> None:
    path, made = store
    authorizer = auth.Authorizer(path, health=health, reflection=reflection)
    for method, required in ((HEALTH_CHECK, health), (REFLECTION_INFO, reflection)):
        refusal = authorizer.check(method, [])
        assert (refusal is not None and refusal.code == grpc.StatusCode.UNAUTHENTICATED) is required
        for key in made.values():  # any role will do
            assert authorizer.check(method, bearer(key)) is None
        assert (authorizer.check(method, bearer(keys.generate())) is not None) is required


def test_method_labels_are_bounded() -> None:
    assert auth.method_label(RECOMMEND) == "Recommend"
    assert auth.method_label(HEALTH_CHECK) == "Check"
    assert auth.method_label("/x.Y/" + "z" * 50) == "unknown"
    assert auth.method_label("/recsys.v1.Gateway/NoSuch") == "unknown"


def test_a_rotated_file_takes_effect_and_a_bad_one_keeps_the_keys(store: tuple[Path, dict[str, str]]) -> None:
    path, made = store
    authorizer = auth.Authorizer(path)
    new = keys.add(path, "reader-2", ["recommend"])
    keys.remove(path, "reader")
    assert authorizer.check(RECOMMEND, bearer(new)) is not None  # until the next poll
    asyncio.run(authorizer.poll())
    assert authorizer.check(RECOMMEND, bearer(new)) is None
    assert authorizer.check(RECOMMEND, bearer(made["reader"])) is not None
    path.write_text("keys: [{name: broken}]\n")
    os.utime(path, ns=(1, 1))
    asyncio.run(authorizer.poll())
    assert authorizer.check(RECOMMEND, bearer(new)) is None
    assert "missing sha256" in (authorizer.keys.refused or "")
    path.unlink()  # a vanished file keeps them too
    asyncio.run(authorizer.poll())
    assert authorizer.check(RECOMMEND, bearer(new)) is None


# --- start-up rules ------------------------------------------------------------------------------------


def gateway_config(argv: list[str]) -> Config:
    return config.parse(Config, argv, env={})


def test_without_keys_only_loopback_or_a_deliberate_flag(tmp_path: Path) -> None:
    assert gateway_config([]).api_keys_file is None  # 127.0.0.1 by default
    assert gateway_config(["--host", "::1"]).api_keys_file is None
    assert gateway_config(["--host", "localhost"]).api_keys_file is None
    for host in ("0.0.0.0", "10.1.2.3", "::", "gateway.example.com"):
        with pytest.raises(config.ConfigError) as raised:
            gateway_config(["--host", host])
        message = str(raised.value)
        assert f"--host {host} is reachable from other machines" in message
        assert "--api-keys-file" in message and "--allow-unauthenticated" in message
        assert gateway_config(["--host", host, "--allow-unauthenticated", "true"]).allow_unauthenticated
    path = tmp_path / "keys.yaml"
    keys.add(path, "a", ["recommend"])
    on = gateway_config(["--host", "0.0.0.0", "--api-keys-file", str(path), "--auth-reflection", "true"])
    assert (on.api_keys_file, on.auth_reflection, on.auth_health) == (path, True, False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth-health", "true"], "--auth-health needs --api-keys-file"),
        (["--auth-reflection", "true"], "--auth-reflection needs --api-keys-file"),
        (["--api-keys-file", "KEYS", "--allow-unauthenticated", "true"], "contradicts --api-keys-file"),
        (["--api-keys-file", "MISSING"], "MISSING: cannot read"),
        (["--api-keys-file", "BAD"], "BAD: keys[0].roles[0]: unknown role 'root'"),
    ],
)
def test_contradictions_and_bad_files_stop_start_up(tmp_path: Path, argv: list[str], message: str) -> None:
    good = tmp_path / "keys.yaml"
    keys.add(good, "a", ["recommend"])
    bad = write(tmp_path / "bad.yaml", {"keys": [entry(roles=["root"])]})
    paths = {"KEYS": str(good), "MISSING": str(tmp_path / "missing.yaml"), "BAD": str(bad)}
    argv = [paths.get(a, a) for a in argv]
    with pytest.raises(config.ConfigError) as raised:
        gateway_config(argv)
    assert message.replace("MISSING", paths["MISSING"]).replace("BAD", paths["BAD"]) in str(raised.value)


def test_refusal_logs_are_throttled_per_reason_method_and_key() -> None:
    throttle = auth.LogThrottle(every_s=60)
    slot = ("unknown", "Recommend", "")
    assert throttle.admit(slot, now=1000.0) == 0
    assert [throttle.admit(slot, now=1000.0 + i) for i in range(1, 50)] == [None] * 49
    assert throttle.admit(("role", "Feedback", "reader"), now=1010.0) == 0  # another slot logs at once
    assert throttle.admit(slot, now=1060.0) == 49  # the next line says how many went unlogged
    assert throttle.admit(slot, now=1061.0) is None


def test_a_key_over_its_rate_is_resource_exhausted_and_refills(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    limited = keys.add(path, "limited", ["recommend"], rate_per_s=2, burst=3)
    free = keys.add(path, "free", ["recommend"])
    assert keys.load(path)[0].to_dict()["rate_per_s"] == 2
    authorizer = auth.Authorizer(path)
    decisions = [authorizer.check(RECOMMEND, bearer(limited)) for _ in range(5)]
    assert [d is None for d in decisions] == [True, True, True, False, False]  # the burst, then refused
    refused = decisions[-1]
    assert refused is not None and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.message == "API key 'limited' is over its rate limit (2 calls/s, burst 3); retry later"
    assert limited not in refused.message
    assert all(authorizer.check(RECOMMEND, bearer(free)) is None for _ in range(100))  # other keys unaffected


def test_the_token_bucket_refills_at_the_rate() -> None:
    from services.gateway.ratelimit import RateLimiter

    limiter = RateLimiter()
    assert [limiter.allow("k", 10, 2, now=0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("k", 10, 2, now=0.05) is False  # half a token
    assert limiter.allow("k", 10, 2, now=0.1) is True
    assert [limiter.allow("k", 10, 2, now=100.0) for _ in range(3)] == [True, True, False]  # capped at burst
