"""Authentication over the wire: gateway processes with an API keys file in front of the session's
backends. Missing and unknown keys are UNAUTHENTICATED, a key without the method's role is
PERMISSION_DENIED, the right role is answered; health and reflection are exempt unless configured;
a rotated keys file takes effect without a restart; the CLI and the load generator send the key;
refusals are counted; and no key ever reaches a log."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.cli import main as cli_main
from services.client import Client, auth_metadata, event
from services.gateway import keys
from services.loadgen import LoadConfig, run
from services.local import BACKENDS, LocalPlatform, free_port
from tests.integration.test_degradation import matching, scrape
from tests.support import RELAXED_BUDGETS

Keys = dict[str, str]


@contextmanager
def gateway(platform: LocalPlatform, work: Path, *flags: str, wait: bool = True) -> Iterator[LocalPlatform]:
    """One more gateway process in front of the session platform's backends, its log in `work`."""
    ports = {b: platform.ports[b] for b in BACKENDS} | {"gateway": free_port()}
    one = LocalPlatform(
        platform.artifacts_dir,
        work,
        ports=ports,
        extra_args={"gateway": [*RELAXED_BUDGETS, "--log-level", "debug", *flags]},
        env={"OTEL_METRICS_EXPORTER": "prometheus"},
    )
    one.start_service("gateway")
    try:
        if wait:
            one.wait_serving("gateway")
        else:
            one.wait_logged("gateway", '"msg": "listening"')
        yield one
    finally:
        one.stop_service("gateway")


def make_keys(path: Path) -> Keys:
    roles = {"reader": ["recommend"], "writer": ["feedback"], "ops": ["admin"]}
    return {name: keys.add(path, name, r) for name, r in roles.items()}


def assert_no_secret_in(log: Path, *secrets: str) -> None:
    """Neither a key nor its hash in the log (the names are what it may show)."""
    text = log.read_text()
    for secret in secrets:
        assert secret not in text and keys.digest(secret) not in text
    assert keys.PREFIX not in text


@pytest.fixture(scope="module")
def secured(
    platform: LocalPlatform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalPlatform, Keys, int]]:
    work = tmp_path_factory.mktemp("auth")
    path = work / "keys.yaml"
    made = make_keys(path)
    metrics_port = free_port()
    with gateway(
        platform, work / "logs", "--api-keys-file", str(path), "--metrics-port", str(metrics_port)
    ) as gw:
        yield gw, made, metrics_port
        assert_no_secret_in(gw.log_dir / "gateway.log", *made.values())


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), str(raised.value.details())


def test_missing_unknown_and_wrong_role_are_refused_and_the_right_role_answered(
    secured: tuple[LocalPlatform, Keys, int],
) -> None:
    gw, made, metrics_port = secured
    address = gw.address("gateway")
    before = scrape(metrics_port)
    with Client(address) as anonymous:
        code, details = code_of(lambda: anonymous.recommend("1", k=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert details == "missing credentials: send the metadata `authorization: Bearer <API key>`"
        assert code_of(lambda: anonymous.feedback([event("1", "318", "click")]))[0] == code
    stranger = keys.generate()
    with Client(address, api_key=stranger) as client:
        code, details = code_of(lambda: client.recommend("1", k=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED and details.startswith("unknown API key")
        assert stranger not in details
    with Client(address, api_key=made["reader"]) as reader:
        response = reader.recommend("1", k=5)
        assert len(response.items) == 5 and not response.degraded
        code, details = code_of(lambda: reader.feedback([event("1", "318", "click")]))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == "API key 'reader' lacks the 'feedback' role that Feedback needs (it has recommend)"
    with Client(address, api_key=made["writer"]) as writer:
        assert writer.feedback([event("auth-user", "318", "click")]) == 1
        assert code_of(lambda: writer.recommend("1", k=5))[0] == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(address) as channel:
        # one way to send a key: another header is no credential
        raw = channel.unary_unary("/recsys.v1.Gateway/Recommend", None, None)
        code, _ = code_of(lambda: raw(b"", metadata=(("x-api-key", made["reader"]),), timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # authentication comes first: undecodable bytes without a key are not even parsed
        assert code_of(lambda: raw(b"\x08\xff", timeout=10))[0] == grpc.StatusCode.UNAUTHENTICATED
        # a method that does not exist tells a caller without a key nothing, and needs admin
        ghost = channel.unary_unary("/recsys.v1.Gateway/DropEverything", None, None)
        assert code_of(lambda: ghost(b"", timeout=10))[0] == grpc.StatusCode.UNAUTHENTICATED
        reader_md = auth_metadata(made["reader"])
        assert (
            code_of(lambda: ghost(b"", metadata=reader_md, timeout=10))[0]
            == grpc.StatusCode.PERMISSION_DENIED
        )
        ops_md = auth_metadata(made["ops"])
        assert code_of(lambda: ghost(b"", metadata=ops_md, timeout=10))[0] == grpc.StatusCode.UNIMPLEMENTED
        # the catalogue's writes need admin: a reader is refused, an admin reaches the handler
        upsert = channel.unary_unary("/recsys.v1.Gateway/UpsertItems", None, None)
        reader_code = code_of(lambda: upsert(b"", metadata=reader_md, timeout=10))[0]
        assert reader_code == grpc.StatusCode.PERMISSION_DENIED
        assert (
            code_of(lambda: upsert(b"", metadata=ops_md, timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT
        )

    after = scrape(metrics_port)

    def refused(*labels: str) -> float:
        name = "recsys_gateway_auth_refused_total"
        return matching(after, name, *labels) - matching(before, name, *labels)

    assert refused('reason="missing"', 'method="Recommend"') == 3  # no header, x-api-key, the bytes
    assert refused('reason="missing"', 'method="Feedback"') == 1
    assert refused('reason="unknown"', 'method="Recommend"') == 1
    assert refused('reason="role"', 'method="Feedback"') == 1
    assert refused('reason="role"', 'method="Recommend"') == 1
    assert refused('reason="missing"', 'method="unknown"') == 1
    assert refused('reason="role"', 'method="unknown"') == 1

    lines = [
        json.loads(line)
        for line in (gw.log_dir / "gateway.log").read_text().splitlines()
        if line.startswith("{")
    ]
    (started,) = [line for line in lines if line["msg"] == "authentication on"]
    assert started["keys"] == ["ops", "reader", "writer"]
    role_refusals = [line for line in lines if line["msg"] == "call refused" and line["reason"] == "role"]
    assert {(line["key"], line["method"]) for line in role_refusals} >= {
        ("reader", "Feedback"),
        ("writer", "Recommend"),
    }
    assert_no_secret_in(gw.log_dir / "gateway.log", *made.values(), stranger)


def health(address: str, key: str | None = None) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="recsys.v1.Gateway"),
            metadata=auth_metadata(key),
            timeout=10,
        )
        return int(reply.status)


def watch_first(address: str, key: str | None = None) -> int:
    """The first status of a Watch: a server-streaming method."""
    with grpc.insecure_channel(address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), metadata=auth_metadata(key), timeout=10
        )
        return int(next(iter(stream)).status)


def services_listed(address: str, key: str | None = None) -> list[str]:
    """Reflection's list of services: a bidirectional stream."""
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), metadata=auth_metadata(key), timeout=10))
        return [s.name for s in reply.list_services_response.service]


SERVING = health_pb2.HealthCheckResponse.SERVING


def test_health_and_reflection_are_exempt_by_default(secured: tuple[LocalPlatform, Keys, int]) -> None:
    address = secured[0].address("gateway")
    assert health(address) == SERVING
    assert watch_first(address) == SERVING
    assert "recsys.v1.Gateway" in services_listed(address)


def test_health_and_reflection_can_require_a_key(platform: LocalPlatform, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    made = make_keys(path)
    flags = ("--api-keys-file", str(path), "--auth-health", "true", "--auth-reflection", "true")
    with gateway(platform, tmp_path / "logs", *flags, wait=False) as gw:
        address = gw.address("gateway")
        for call in (health, watch_first, services_listed):
            code, details = code_of(lambda: call(address))  # noqa: B023  # called at once
            assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in details
            assert code_of(lambda: call(address, keys.generate()))[0] == grpc.StatusCode.UNAUTHENTICATED  # noqa: B023
        # any known key will do, whatever its roles
        assert health(address, made["ops"]) == SERVING
        assert watch_first(address, made["writer"]) == SERVING
        assert "recsys.v1.Gateway" in services_listed(address, made["reader"])
    assert_no_secret_in(tmp_path / "logs" / "gateway.log", *made.values())


def eventually(check: object, timeout_s: float = 15.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the reload interval"
        time.sleep(0.1)


def test_a_rotated_keys_file_takes_effect_without_a_restart(
    platform: LocalPlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.yaml"
    made = make_keys(path)
    flags = ("--api-keys-file", str(path), "--api-keys-reload-s", "0.2")
    with gateway(platform, tmp_path / "logs", *flags) as gw:
        address = gw.address("gateway")
        pid = gw.processes["gateway"].pid

        def answers(key: str) -> bool:
            with Client(address, api_key=key) as client:
                try:
                    client.recommend("1", k=3)
                except grpc.RpcError as e:
                    assert e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                    return False
                return True

        assert answers(made["reader"])
        # rotate as an operator would: a new key, then the old one revoked (each an atomic rename)
        assert (
            cli_main(["keys", "add", "--file", str(path), "--name", "reader-2", "--role", "recommend"]) == 0
        )
        new = capsys.readouterr().out.strip()
        eventually(lambda: answers(new))
        assert cli_main(["keys", "remove", "--file", str(path), "--name", "reader"]) == 0
        eventually(lambda: not answers(made["reader"]))
        gw.wait_logged("gateway", '"msg": "API keys reloaded"')

        # a broken file is refused, the log says why, and the keys in force stay in force
        path.write_text("keys:\n  - name: reader-3\n    sha256: 1234\n    roles: [recommend]\n")
        gw.wait_logged("gateway", "API keys file refused")
        assert answers(new) and not answers(made["reader"])
        refusal = [
            json.loads(line)
            for line in (gw.log_dir / "gateway.log").read_text().splitlines()
            if "API keys file refused" in line
        ]
        assert "keys[0].sha256: expected 64 lowercase hex digits" in refusal[0]["reason"]
        assert gw.processes["gateway"].pid == pid and gw.processes["gateway"].poll() is None
    assert_no_secret_in(tmp_path / "logs" / "gateway.log", *made.values(), new)


def recsys(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_API_KEY"}
    if key is not None:
        env["RECSYS_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_cli_and_the_load_generator_send_the_key(secured: tuple[LocalPlatform, Keys, int]) -> None:
    gw, made, _ = secured
    address = gw.address("gateway")
    ok = recsys("recommend", "--user", "1", "-k", "3", "--gateway", address, key=made["reader"])
    assert ok.returncode == 0, ok.stderr
    refused = recsys("recommend", "--user", "1", "-k", "3", "--gateway", address)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "recsys recommend: UNAUTHENTICATED: missing credentials: send the metadata `authorization: Bearer <API key>`"
    ]
    sent = recsys("feedback", "--user", "auth-cli", "--item", "318", "--gateway", address, key=made["writer"])
    assert sent.returncode == 0 and sent.stdout.strip() == "accepted 1", sent.stderr
    denied = recsys(
        "feedback", "--user", "auth-cli", "--item", "318", "--gateway", address, key=made["reader"]
    )
    assert (
        denied.returncode == 2
        and "PERMISSION_DENIED" in denied.stderr
        and made["reader"] not in denied.stderr
    )

    load = LoadConfig(gateway=address, users=["1", "2"], duration_s=10, max_requests=20, timeout_s=10)
    with_key = run(dataclasses.replace(load, api_key=made["reader"]))
    assert with_key.requests == 20 and with_key.errors == {}
    assert "api_key" not in with_key.config
    without = run(load)
    assert without.errors == {"UNAUTHENTICATED": 20}


def test_a_gateway_refuses_to_start_open_on_a_reachable_host_or_with_a_bad_keys_file(tmp_path: Path) -> None:
    result = recsys("serve", "gateway", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "recsys serve: --host 0.0.0.0 is reachable from other machines and no --api-keys-file"
    )
    bad = tmp_path / "keys.yaml"
    bad.write_text(
        "keys:\n  - name: backend-1\n    sha256: rsk_oops_the_key_itself\n    roles: [recommend]\n"
    )
    result = recsys("serve", "gateway", "--host", "0.0.0.0", "--api-keys-file", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"recsys serve: {bad}: keys[0].sha256: expected 64 lowercase hex digits, the SHA-256 of the key "
        "(never the key itself)"
    ]
    assert "rsk_oops" not in result.stderr


def test_a_key_over_its_rate_limit_is_resource_exhausted_over_the_wire(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    path = tmp_path / "keys.yaml"
    limited = keys.add(path, "limited", ["recommend"], rate_per_s=1, burst=5)
    other = keys.add(path, "other", ["recommend"])
    with gateway(platform, tmp_path / "logs", "--api-keys-file", str(path)) as gw:
        codes = []
        with Client(gw.address("gateway"), api_key=limited) as client:
            for _ in range(8):
                try:
                    client.recommend("1", k=3)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
                    assert "over its rate limit" in (e.details() or "")
        # The burst, then refused (the next token is a second away); another key is not limited by it.
        assert codes[:5] == ["OK"] * 5 and "RESOURCE_EXHAUSTED" in codes[5:]
        with Client(gw.address("gateway"), api_key=other) as client:
            assert len(client.recommend("1", k=3).items) == 3
