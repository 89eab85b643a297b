"""TLS files: what `recsys certs make` writes, how each bad PEM file is refused (one line naming it), the
flags that must go together, and a server's credentials following their files."""

from __future__ import annotations

import argparse
import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services import certs
from services.cli import main as cli_main
from services.common import config
from services.common.config import ConfigError
from services.common.tls import (
    ClientTLS,
    PemFile,
    ServerTLS,
    add_client_arguments,
    client_from_args,
    read_identity,
    read_roots,
)


@pytest.fixture()
def made(tmp_path: Path) -> Path:
    certs.make(tmp_path / "tls", ["recsys.example"], ["10.0.0.7"])
    return tmp_path / "tls"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))}


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_make_writes_a_ca_a_service_certificate_and_a_client_certificate(made: Path) -> None:
    ca, service, client = load(made / "ca.crt"), load(made / "tls.crt"), load(made / "client.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (service, client):
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
    assert sans(service) == {"localhost", "127.0.0.1", "::1", "recsys.example", "10.0.0.7"}
    # the gateway presents the services' certificate to the backends: client authentication too
    assert usages(service) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    for name in ("ca.key", "tls.key", "client.key"):
        assert stat.S_IMODE((made / name).stat().st_mode) == 0o600, name
    assert not [p for p in made.iterdir() if p.name.startswith(".")]  # no temporary file left
    read_identity(PemFile("--tls-cert", made / "tls.crt"), PemFile("--tls-key", made / "tls.key"))


def test_making_again_keeps_the_ca_and_issues_new_certificates(made: Path) -> None:
    before = {n: (made / n).read_bytes() for n in ("ca.crt", "ca.key", "tls.crt", "client.crt")}
    assert not certs.make(made).new_ca
    assert (made / "ca.crt").read_bytes() == before["ca.crt"]
    assert (made / "ca.key").read_bytes() == before["ca.key"]
    assert (made / "tls.crt").read_bytes() != before["tls.crt"]
    load(made / "tls.crt").verify_directly_issued_by(load(made / "ca.crt"))


def test_chart_names_follow_the_charts_fullname() -> None:
    names = certs.chart_names("shop", "recs")
    assert "shop-recsys-gateway" in names
    assert "shop-recsys-features.recs.svc.cluster.local" in names
    assert "recsys-ranking.prod.svc" in certs.chart_names("recsys", "prod")


def test_certs_make_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["certs", "make", str(tmp_path / "d"), "--release", "shop", "-n", "recs"]) == 0
    assert "shop-recsys-gateway.recs.svc.cluster.local" in sans(load(tmp_path / "d" / "tls.crt"))
    assert "new CA" in capsys.readouterr().out
    assert cli_main(["certs", "make", str(tmp_path / "e"), "--release", "shop"]) == 2
    assert "--release and --namespace go together" in capsys.readouterr().err
    assert cli_main(["certs", "make", str(tmp_path / "f"), "--ip", "not-an-ip"]) == 2
    assert not (tmp_path / "f").exists()


# --- refusals -------------------------------------------------------------------------------------------


def refusal(cert: Path, key: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        read_identity(PemFile("--tls-cert", cert), PemFile("--tls-key", key))
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_each_bad_file_is_refused_naming_it(made: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.make(other)
    missing = tmp_path / "missing.crt"
    assert (
        refusal(missing, made / "tls.key") == f"--tls-cert {missing}: cannot read (No such file or directory)"
    )
    assert (
        refusal(made / "tls.key", made / "tls.key") == f"--tls-cert {made / 'tls.key'}: not a PEM certificate"
    )
    assert (
        refusal(made / "tls.crt", made / "tls.crt") == f"--tls-key {made / 'tls.crt'}: not a PEM private key"
    )
    assert refusal(made / "tls.crt", other / "tls.key") == (
        f"--tls-key {other / 'tls.key'}: is not the key of the certificate in --tls-cert {made / 'tls.crt'}"
    )


def test_an_encrypted_key_is_refused(made: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((made / "tls.key").read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    assert "is encrypted" in refusal(made / "tls.crt", encrypted)


def test_certificates_outside_their_validity_are_refused(made: Path, tmp_path: Path) -> None:
    ca = certs.load_authority(made)
    assert ca is not None
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = certs.issue(ca, "old", ["localhost"], days=30, now=long_ago)
    certs.write_pair(tmp_path, "expired", *expired)
    assert refusal(tmp_path / "expired.crt", tmp_path / "expired.key").endswith(
        "expired on 2020-01-31 00:00 UTC"
    )
    future = certs.issue(ca, "new", ["localhost"], now=datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
    certs.write_pair(tmp_path, "future", *future)
    assert "not valid before 2099-12-31 23:55 UTC" in refusal(
        tmp_path / "future.crt", tmp_path / "future.key"
    )


def test_a_ca_bundle_needs_one_certificate_valid_now(made: Path, tmp_path: Path) -> None:
    old = certs.new_authority("old CA", days=30, now=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(certs.cert_pem(old.cert) + (made / "ca.crt").read_bytes())
    assert read_roots(PemFile("--tls-client-ca", bundle)) == bundle.read_bytes()
    only_old = tmp_path / "old.crt"
    only_old.write_bytes(certs.cert_pem(old.cert))
    with pytest.raises(ConfigError, match=r"^--tls-client-ca .*old\.crt: expired on "):
        read_roots(PemFile("--tls-client-ca", only_old))


# --- flags that go together -----------------------------------------------------------------------------


def test_server_flags_go_together(made: Path) -> None:
    from services.retrieval.service import Config

    with pytest.raises(ConfigError, match=r"--tls-cert and --tls-key go together"):
        config.parse(Config, ["--tls-cert", str(made / "tls.crt")], env={})
    with pytest.raises(ConfigError, match=r"--tls-client-ca \(mutual TLS\) needs --tls-cert"):
        config.parse(Config, [], env={"RECSYS_TLS_CLIENT_CA": str(made / "ca.crt")})
    cfg = config.parse(
        Config, ["--tls-cert", str(made / "tls.crt"), "--tls-key", str(made / "tls.key")], env={}
    )
    assert cfg.tls_client_ca is None


def test_client_flags_go_together(made: Path) -> None:
    from services.features.service import Config as FeaturesConfig
    from services.gateway.service import Config as GatewayConfig

    with pytest.raises(
        ConfigError, match="--backend-tls-client-cert and --backend-tls-client-key go together"
    ):
        config.parse(GatewayConfig, ["--backend-tls-client-cert", str(made / "tls.crt")], env={})
    gateway = config.parse(GatewayConfig, ["--backend-tls-ca", str(made / "ca.crt")], env={})
    assert gateway.backend_tls() == ClientTLS(made / "ca.crt", flags="--backend-tls")
    assert config.parse(GatewayConfig, [], env={}).backend_tls() is None
    with pytest.raises(ConfigError, match="--redis-tls-\\* need a rediss:// --redis-url"):
        config.parse(
            FeaturesConfig,
            ["--redis-url", "redis://127.0.0.1:6379/0", "--redis-tls-ca", str(made / "ca.crt")],
            env={},
        )
    with pytest.raises(ConfigError, match="--tls-client-cert and --tls-client-key go together"):
        ClientTLS(client_key=made / "client.key")


def test_cli_client_flags() -> None:
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    assert client_from_args(parser.parse_args([])) is None
    assert client_from_args(parser.parse_args(["--tls"])) == ClientTLS()
    assert client_from_args(
        parser.parse_args(["--tls-ca", "ca.crt", "--tls-server-name", "gw"])
    ) == ClientTLS(Path("ca.crt"), server_name="gw")


# --- a server's credentials follow their files --------------------------------------------------------------


def test_server_credentials_follow_their_files(made: Path, caplog: pytest.LogCaptureFixture) -> None:
    tls = ServerTLS(made / "tls.crt", made / "tls.key", made / "ca.crt")
    assert tls.mutual and tls._fetch() is None  # unchanged: the configuration in force stays
    first = tls.files.value.identity
    certs.make(made)  # a new certificate from the same CA
    assert tls._fetch() is not None
    assert tls._fetch() is None
    renewed = tls.files.value.identity
    assert renewed.chain != first.chain and "recsys.example" not in renewed.names
    # a broken file on rotation: refused, logged, the certificate in force stays
    (made / "tls.crt").write_text("not a certificate\n")
    assert tls._fetch() is None
    assert tls.files.value.identity == renewed
    assert tls.files.refused == f"--tls-cert {made / 'tls.crt'}: not a PEM certificate"
    assert "TLS certificates file refused" in caplog.text
    # a change to the CA alone is a change too (the files are watched together)
    certs.make(made)
    ca_before = tls.files.value.client_ca
    bundle = (made / "ca.crt").read_bytes() + certs.cert_pem(certs.new_authority("next CA").cert)
    (made / "ca.crt").write_bytes(bundle)
    assert tls._fetch() is not None and tls.files.value.client_ca == bundle != ca_before


def test_up_refuses_a_tls_dir_that_would_not_do_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none"
    assert cli_main(["up", "--tls-dir", str(missing), "--work-dir", str(tmp_path / "var")]) == 2
    message = f"recsys up: --tls-cert {missing / 'tls.crt'}: cannot read (No such file or directory)"
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "var").exists()
