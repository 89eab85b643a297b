"""TLS over the wire: the four services as processes with certificates made here (`recsys certs make`),
the features service on a real redis-server that speaks TLS only, wants a password and a client
certificate. The gateway answers TLS clients and refuses plaintext; the backends refuse a client without a
certificate or with one from another CA; Recommend and Feedback work end to end through every TLS hop;
rotated files (a new certificate from the same CA, then a new CA) reach new connections, and the gateway's
own channels, without a restart; a bad file at start is one line and a non-zero exit, at a rotation it is
refused and the certificate in force stays; Redis refusing the password is a clear error without it."""

from __future__ import annotations

import datetime
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2

from services import certs
from services.cli import main as cli_main
from services.client import Client, event
from services.common.tls import ClientTLS
from services.healthcheck import health_status
from services.local import BACKENDS, SERVICES, LocalPlatform, free_port
from tests.support import RELAXED_BUDGETS, redis_server

REDIS_PASSWORD = "tls-test-password"
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The services' certificates (CA A); the rotation tests below change them in place."""
    directory = tmp_path_factory.mktemp("tls") / "certs"
    certs.make(directory)
    return directory


@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A redis-server with TLS only, a password and client certificates required; its own CA."""
    directory = tmp_path_factory.mktemp("redis-tls")
    certs.make(directory / "certs")
    with redis_server(directory / "data", password=REDIS_PASSWORD, tls_dir=directory / "certs") as url:
        yield url, directory / "certs"


def redis_flags(redis_certs: Path) -> list[str]:
    return [
        *("--redis-tls-ca", str(redis_certs / "ca.crt")),
        *("--redis-tls-client-cert", str(redis_certs / "client.crt")),
        *("--redis-tls-client-key", str(redis_certs / "client.key")),
    ]


@pytest.fixture(scope="module")
def secure(
    artifacts_root: Path,
    tls_dir: Path,
    redis_tls: tuple[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalPlatform]:
    url, redis_certs = redis_tls
    work = tmp_path_factory.mktemp("secure")
    extra = {
        "gateway": [*RELAXED_BUDGETS, "--backend-tls-reload-s", "0.2"],
        "features": redis_flags(redis_certs),
    }
    with LocalPlatform.on_free_ports(
        artifacts_root, work / "logs", redis_url=url, tls_dir=tls_dir, extra_args=extra
    ) as running:
        yield running


def gateway_tls(tls_dir: Path) -> ClientTLS:
    return ClientTLS(tls_dir / "ca.crt", server_name="localhost")


def presented(port: int, tls_dir: Path) -> bytes:
    """The certificate a new TLS connection to `port` is served (DER), whatever its CA."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bytes are compared below, not trusted
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(tls_dir / "client.crt", tls_dir / "client.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def log_count(platform: LocalPlatform, service: str, text: str) -> int:
    return (platform.log_dir / f"{service}.log").read_text(errors="replace").count(text)


def wait_count(platform: LocalPlatform, service: str, text: str, n: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while log_count(platform, service, text) < n:
        assert time.monotonic() < deadline, f"{text!r} not {n} times in {service}'s log"
        time.sleep(0.1)


def recommend_ok(platform: LocalPlatform, tls_dir: Path, user: str = "1") -> None:
    with Client(platform.address("gateway"), tls=gateway_tls(tls_dir)) as client:
        response = client.recommend(user, k=5)
    assert len(response.items) == 5 and not response.degraded, response.degraded_reasons


def pids(platform: LocalPlatform) -> dict[str, int]:
    assert all(p.poll() is None for p in platform.processes.values())
    return {name: p.pid for name, p in platform.processes.items()}


# --- who may connect ------------------------------------------------------------------------------------


def test_the_gateway_answers_tls_clients_end_to_end_and_refuses_plaintext(
    secure: LocalPlatform, tls_dir: Path, tmp_path: Path
) -> None:
    recommend_ok(secure, tls_dir)  # gateway TLS, mutual TLS to each backend, features -> Redis over TLS
    address = secure.address("gateway")
    with Client(address) as plaintext, pytest.raises(grpc.RpcError) as refused:
        plaintext.recommend("1", k=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    certs.make(tmp_path / "other")  # a CA the gateway's certificate does not chain to
    with (
        Client(address, tls=ClientTLS(tmp_path / "other" / "ca.crt", server_name="localhost")) as stranger,
        pytest.raises(grpc.RpcError) as untrusted,
    ):
        stranger.recommend("1", k=5)
    assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


def test_feedback_goes_through_every_tls_hop_into_redis(
    secure: LocalPlatform, tls_dir: Path, redis_tls: tuple[str, Path]
) -> None:
    url, redis_certs = redis_tls
    with Client(secure.address("gateway"), tls=gateway_tls(tls_dir)) as client:
        assert client.feedback([event("tls-user", "1", "click", event_id="tls-click-1")]) == 1
    store = redis.Redis.from_url(
        url,
        ssl_ca_certs=str(redis_certs / "ca.crt"),
        ssl_certfile=str(redis_certs / "client.crt"),
        ssl_keyfile=str(redis_certs / "client.key"),
    )
    deadline = time.monotonic() + 10  # a slow write waits in the spool and is drained soon after
    with store:
        while True:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = store.xrange("recsys:events")  # type: ignore[assignment]
            ids = [e[b"event_id"] for _, e in entries if e[b"user_id"] == b"tls-user"]
            if ids or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert ids == [b"tls-click-1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_accept_only_client_certificates_from_their_ca(
    secure: LocalPlatform, tls_dir: Path, tmp_path: Path, backend: str
) -> None:
    address = secure.address(backend)
    ca = tls_dir / "ca.crt"
    certs.make(tmp_path / "other")
    other = tmp_path / "other"
    assert (
        health_status(address, tls=ClientTLS(ca, tls_dir / "client.crt", tls_dir / "client.key")) == SERVING
    )
    refused = [
        None,  # plaintext
        ClientTLS(ca),  # no certificate
        ClientTLS(ca, other / "client.crt", other / "client.key"),  # signed by another CA
    ]
    for tls in refused:
        assert health_status(address, tls=tls, timeout_s=2.0) == health_pb2.HealthCheckResponse.UNKNOWN, tls


def test_the_cli_and_the_health_check_speak_tls(
    secure: LocalPlatform, tls_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = secure.address("gateway")
    flags = ["--tls-ca", str(tls_dir / "ca.crt"), "--tls-server-name", "localhost"]
    assert cli_main(["recommend", "--user", "1", "-k", "3", "--gateway", gateway, *flags]) == 0
    assert cli_main(["feedback", "--user", "tls-cli", "--item", "2", "--gateway", gateway, *flags]) == 0
    assert cli_main(["recommend", "--user", "1", "--gateway", gateway]) == 2  # plaintext: refused
    load = ["bench", "load", "--gateway", gateway, "--duration", "2", "--max-requests", "20", *flags]
    assert cli_main(load) == 0
    assert "errors: 0 " in capsys.readouterr().out
    client = [
        "--tls-client-cert",
        str(tls_dir / "client.crt"),
        "--tls-client-key",
        str(tls_dir / "client.key"),
    ]
    check = [sys.executable, "-m", "services.healthcheck", *flags, *client]
    ranking = secure.address("ranking")
    assert subprocess.run([*check, ranking, "recsys.v1.RankingService"], check=False).returncode == 0
    no_cert = subprocess.run([*check[:-4], ranking], check=False, capture_output=True)
    assert no_cert.returncode == 1
    missing = subprocess.run(
        [*check[:3], "--tls-ca", "/nonexistent/ca.crt", ranking], check=False, capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == "healthcheck: --tls-ca /nonexistent/ca.crt: cannot read (No such file or directory)"
    )


# --- rotation -------------------------------------------------------------------------------------------


def test_a_new_certificate_reaches_new_connections_and_the_gateways_channels_without_a_restart(
    secure: LocalPlatform, tls_dir: Path
) -> None:
    before = pids(secure)
    renewed = log_count(secure, "gateway", "backend channels renewed")
    old = der(tls_dir / "tls.crt")
    assert presented(secure.ports["gateway"], tls_dir) == old
    certs.make(tls_dir)  # new certificates from the same CA, written in place
    new = der(tls_dir / "tls.crt")
    assert new != old
    for service in SERVICES:
        assert presented(secure.ports[service], tls_dir) == new, service
        secure.wait_logged(service, "TLS certificates reloaded")
    # the gateway presents its client certificate from new channels
    wait_count(secure, "gateway", "backend channels renewed", renewed + 1)
    recommend_ok(secure, tls_dir)
    assert pids(secure) == before


def test_a_bad_file_at_a_rotation_is_refused_and_the_certificate_in_force_stays(
    secure: LocalPlatform, tls_dir: Path
) -> None:
    before = pids(secure)
    in_force = der(tls_dir / "tls.crt")
    good = (tls_dir / "tls.crt").read_bytes()
    refused = log_count(secure, "gateway", "TLS certificates file refused")
    (tls_dir / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    try:
        assert presented(secure.ports["gateway"], tls_dir) == in_force
        wait_count(secure, "gateway", "TLS certificates file refused", refused + 1)
        assert (
            f"--tls-cert {tls_dir / 'tls.crt'}: not a PEM certificate"
            in (secure.log_dir / "gateway.log").read_text()
        )
        # the gateway's channels to the backends stay as well (their file was refused too)
        wait_count(secure, "gateway", f"--backend-tls-client-cert {tls_dir / 'tls.crt'}: not a PEM", 1)
        recommend_ok(secure, tls_dir)
    finally:
        (tls_dir / "tls.crt").write_bytes(good)
    assert presented(secure.ports["gateway"], tls_dir) == in_force
    assert pids(secure) == before


def test_a_new_ca_is_trusted_and_the_old_one_dropped_without_a_restart(
    secure: LocalPlatform, tls_dir: Path
) -> None:
    """CA rotation: trust both, move every certificate to the new CA, then drop the old CA."""
    before = pids(secure)
    old_ca = certs.load_authority(tls_dir)
    assert old_ca is not None
    new_ca = certs.new_authority("recsys CA 2")
    renewed = log_count(secure, "gateway", "backend channels renewed")
    # 1. every process trusts both CAs (backends: client certificates; gateway: the backends' certificates)
    (tls_dir / "ca.crt").write_bytes(certs.cert_pem(old_ca.cert) + certs.cert_pem(new_ca.cert))
    wait_count(secure, "gateway", "backend channels renewed", renewed + 1)
    # 2. the services' certificate from the new CA: served to new connections, presented by the gateway
    certs.write_pair(tls_dir, "tls", *certs.issue(new_ca, "recsys", ["localhost"], ["127.0.0.1"]))
    wait_count(secure, "gateway", "backend channels renewed", renewed + 2)
    assert presented(secure.ports["ranking"], tls_dir) == der(tls_dir / "tls.crt")
    recommend_ok(secure, tls_dir)
    # 3. the old CA dropped: a certificate it signed is refused, the gateway (on the new one) still served
    (tls_dir / "ca.crt").write_bytes(certs.cert_pem(new_ca.cert))
    wait_count(secure, "gateway", "backend channels renewed", renewed + 3)
    old_client = ClientTLS(tls_dir / "ca.crt", tls_dir / "client.crt", tls_dir / "client.key", "localhost")
    assert health_status(secure.address("ranking"), tls=old_client) == health_pb2.HealthCheckResponse.UNKNOWN
    certs.write_pair(tls_dir, "client", *certs.issue(new_ca, "recsys-client", server=False))
    assert health_status(secure.address("ranking"), tls=old_client) == SERVING
    recommend_ok(secure, tls_dir, user="2")
    assert pids(secure) == before


# --- start-up -------------------------------------------------------------------------------------------


def recsys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_bad_tls_files_at_start_are_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    good, other = tmp_path / "good", tmp_path / "other"
    certs.make(good)
    certs.make(other)
    ca = certs.load_authority(good)
    assert ca is not None
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    certs.write_pair(tmp_path, "expired", *certs.issue(ca, "old", ["localhost"], days=1, now=long_ago))
    port = str(free_port())
    served = ["--tls-cert", str(good / "tls.crt"), "--tls-key", str(good / "tls.key")]
    cases = {
        "missing": (
            ["--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(good / "tls.key")],
            f"--tls-cert {tmp_path / 'none.crt'}: cannot read (No such file or directory)",
        ),
        "mismatched": (
            ["--tls-cert", str(good / "tls.crt"), "--tls-key", str(other / "tls.key")],
            f"--tls-key {other / 'tls.key'}: is not the key of the certificate in --tls-cert {good / 'tls.crt'}",
        ),
        "not a CA": (
            [*served, "--tls-client-ca", str(good / "tls.key")],
            f"--tls-client-ca {good / 'tls.key'}: not a PEM certificate",
        ),
        "expired": (
            ["--tls-cert", str(tmp_path / "expired.crt"), "--tls-key", str(tmp_path / "expired.key")],
            f"--tls-cert {tmp_path / 'expired.crt'}: expired on 2020-01-02 00:00 UTC",
        ),
        "half": (
            ["--tls-cert", str(good / "tls.crt")],
            "--tls-cert and --tls-key go together (RECSYS_TLS_CERT, RECSYS_TLS_KEY)",
        ),
    }
    for case, (flags, message) in cases.items():
        result = recsys("serve", "gateway", "--port", port, *flags)
        assert result.returncode == 2, (case, result.stderr)
        assert result.stderr.strip().splitlines() == [f"recsys serve: {message}"], case


def test_redis_refusing_the_password_is_a_clear_error_without_it(
    redis_tls: tuple[str, Path], tmp_path: Path
) -> None:
    url, redis_certs = redis_tls
    wrong = url.replace(REDIS_PASSWORD, "not-the-password")
    common = ["--artifacts-dir", str(tmp_path), "--spool", str(tmp_path / "spool.jsonl")]
    result = recsys("serve", "features", "--redis-url", wrong, *redis_flags(redis_certs), *common)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith("recsys serve: Redis at rediss://:***@127.0.0.1:")
        and "refused to authenticate" in line
    )
    assert "not-the-password" not in result.stderr
    # no client certificate: Redis (tls-auth-clients yes) ends the handshake
    no_cert = recsys(
        "serve", "features", "--redis-url", url, "--redis-tls-ca", str(redis_certs / "ca.crt"), *common
    )
    assert no_cert.returncode == 2
    (line,) = no_cert.stderr.strip().splitlines()
    assert line.startswith("recsys serve: cannot reach Redis at rediss://:***@127.0.0.1:")
    assert line.endswith("(a Redis that requires client certificates needs --redis-tls-client-cert/-key)")
    assert REDIS_PASSWORD not in no_cert.stderr
