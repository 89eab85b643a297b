"""`recsys certs make DIR`: a CA and the certificates `recsys up --tls-dir DIR` (and the chart's
tls.existingSecret) serve with, made with the `cryptography` package.

DIR receives, in the layout of a Kubernetes TLS Secret plus the CA's key and a client certificate:

    ca.crt, ca.key          the CA (kept when present: running the command again issues new certificates
                            from the same CA, which is a rotation the services pick up without a restart)
    tls.crt, tls.key        the services' certificate: server and client authentication (the gateway
                            presents it to the backends), for localhost, 127.0.0.1, ::1 and the names given
    client.crt, client.key  a client-only certificate, for tools that call a backend (`recsys monitor drift`)

Private keys are written 0600 (never readable by others), every file in one rename (never half-written).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: What the services answer as on one machine (`recsys up` listens on loopback).
LOCAL_NAMES = ("localhost",)
LOCAL_IPS = ("127.0.0.1", "::1")
#: The chart's components whose Services a certificate for a release must name.
CHART_COMPONENTS = ("gateway", "features", "retrieval", "ranking")
#: Backdating, so a machine whose clock is a little behind accepts a certificate made just now.
SKEW = datetime.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: PrivateKey


def _key() -> PrivateKey:
    # P-256: small and fast, and accepted by gRPC (BoringSSL), Redis (OpenSSL) and Python's ssl.
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(
    builder: x509.CertificateBuilder, days: float, now: datetime.datetime | None
) -> x509.CertificateBuilder:
    start = (now or datetime.datetime.now(datetime.UTC)) - SKEW
    return builder.not_valid_before(start).not_valid_after(start + SKEW + datetime.timedelta(days=days))


def new_authority(
    common_name: str = "recsys CA", days: float = 3650, now: datetime.datetime | None = None
) -> Authority:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Authority(_validity(builder, days, now).sign(key, hashes.SHA256()), key)


def issue(
    ca: Authority,
    common_name: str,
    dns_names: Iterable[str] = (),
    ips: Iterable[str] = (),
    *,
    days: float = 365,
    server: bool = True,
    now: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A certificate signed by `ca`: client authentication always, server authentication with `server`
    (then for `dns_names` and `ips`). `now` backdates or postdates it (tests of expired certificates)."""
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _validity(builder, days, now).sign(ca.key, hashes.SHA256()), key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write `data` to `path` in one rename; a private file is 0600 from its creation on (never briefly
    readable by others, whatever the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_pair(directory: Path, stem: str, cert: x509.Certificate, key: PrivateKey) -> None:
    """`stem`.key then `stem`.crt: a reader that sees the new certificate finds its key already there."""
    write_file(directory / f"{stem}.key", key_pem(key), private=True)
    write_file(directory / f"{stem}.crt", cert_pem(cert))


def load_authority(directory: Path) -> Authority | None:
    """The CA in `directory` (ca.crt, ca.key), or None when there is none."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if not (cert_path.exists() and key_path.exists()):
        return None
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, PrivateKey):
        raise ValueError(f"{key_path}: not an EC key (made by another tool?)")
    return Authority(x509.load_pem_x509_certificate(cert_path.read_bytes()), key)


def chart_names(release: str, namespace: str, cluster_domain: str = "cluster.local") -> list[str]:
    """The DNS names the chart's clients use for each component of a release (deploy/helm/recsys with no
    nameOverride/fullnameOverride): the short Service name, .namespace, .namespace.svc and the FQDN."""
    fullname = release if "recsys" in release else f"{release}-recsys"
    fullname = fullname[:63].rstrip("-")[:50].rstrip("-")
    names = []
    for component in CHART_COMPONENTS:
        service = f"{fullname}-{component}"
        names += [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
        names.append(f"{service}.{namespace}.svc.{cluster_domain}")
    return names


@dataclass(frozen=True)
class Made:
    directory: Path
    new_ca: bool
    names: list[str]


def make(directory: Path, dns_names: Sequence[str] = (), ips: Sequence[str] = (), days: float = 365) -> Made:
    """The CA (kept when `directory` has one), the services' certificate and a client certificate."""
    ca = load_authority(directory)
    new_ca = ca is None
    if ca is None:
        ca = new_authority()
        write_pair(directory, "ca", ca.cert, ca.key)
    names = [*LOCAL_NAMES, *dns_names]
    addresses = [*LOCAL_IPS, *ips]
    write_pair(directory, "tls", *issue(ca, "recsys", names, addresses, days=days))
    write_pair(directory, "client", *issue(ca, "recsys-client", days=days, server=False))
    return Made(directory, new_ca, [*names, *addresses])


# --- the command ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`recsys certs make ...` (the `certs` parser is created by services/cli.py)."""
    commands = parser.add_subparsers(dest="certs_command", required=True)
    run = commands.add_parser(
        "make", help="a CA (kept when DIR has one), the services' certificate and a client certificate"
    )
    run.add_argument("dir", type=Path, help="where to write ca.crt, tls.crt/.key, client.crt/.key")
    run.add_argument("--dns-name", action="append", default=[], help="another name of the services")
    run.add_argument("--ip", action="append", default=[], help="another IP address of the services")
    run.add_argument(
        "--release", default=None, help="add the chart's Service names of this Helm release (with -n)"
    )
    run.add_argument("--namespace", "-n", default=None, help="the release's namespace")
    run.add_argument("--cluster-domain", default="cluster.local", help="the cluster's DNS domain")
    run.add_argument("--days", type=float, default=365, help="validity of the certificates (days)")


def main(args: argparse.Namespace) -> int:
    names = list(args.dns_name)
    if (args.release is None) != (args.namespace is None):
        print("recsys certs make: --release and --namespace go together", file=sys.stderr)
        return 2
    if args.release is not None:
        names += chart_names(args.release, args.namespace, args.cluster_domain)
    try:
        for ip in args.ip:
            ipaddress.ip_address(ip)
        made = make(args.dir, names, args.ip, args.days)
    except (ValueError, OSError) as e:
        print(f"recsys certs make: {e}", file=sys.stderr)
        return 2
    ca = "new CA" if made.new_ca else "the CA already there"
    print(f"{made.directory}: {ca}; tls.crt for {', '.join(made.names)}; client.crt")
    return 0
