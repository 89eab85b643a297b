"""TLS for the gRPC hops: a server's certificate and key (plus, for mutual TLS, the CA its clients'
certificates must chain to), re-read when the files change, and a client's CA, certificate and key.

Every PEM file is checked when it is read (parses, the key belongs to the certificate, the certificate is
valid now), so a bad file is refused with one line naming it, at start-up or at a rotation, instead of
failing every handshake with an OpenSSL error on the other side of the connection.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.config import ConfigError
from services.common.watched import WatchedFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PemFile:
    """A PEM file and the flag that named it (what a message about the file says)."""

    flag: str
    path: Path

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{self.flag} {self.path}: cannot read ({e.strerror or e})") from None

    def refuse(self, why: str) -> ConfigError:
        return ConfigError(f"{self.flag} {self.path}: {why}")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _certificates(file: PemFile) -> tuple[bytes, list[x509.Certificate]]:
    data = file.read()
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError:  # cryptography's message is a link to its FAQ
        raise file.refuse("not a PEM certificate") from None


def _valid_now(cert: x509.Certificate) -> str | None:
    """Why `cert` cannot be used now, or None."""
    now = _now()
    if cert.not_valid_after_utc <= now:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return (
        *sans.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)),
    )


def _public(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@dataclass(frozen=True)
class Identity:
    """A certificate chain and the private key that belongs to its first certificate."""

    chain: bytes
    key: bytes
    subject: str
    names: tuple[str, ...]
    not_after: datetime.datetime

    def describe(self) -> dict[str, Any]:
        return {"subject": self.subject, "names": list(self.names), "not_after": self.not_after.isoformat()}


def read_identity(cert: PemFile, key: PemFile) -> Identity:
    """Read and check a certificate and its key; ConfigError naming the file at fault."""
    chain, certs = _certificates(cert)
    leaf = certs[0]
    if (why := _valid_now(leaf)) is not None:
        raise cert.refuse(why)
    key_data = key.read()
    try:
        private = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise key.refuse("is encrypted: a service cannot type its passphrase") from None
    except ValueError:
        raise key.refuse("not a PEM private key") from None
    if _public(private.public_key()) != _public(leaf.public_key()):
        raise key.refuse(f"is not the key of the certificate in {cert.flag} {cert.path}")
    return Identity(chain, key_data, leaf.subject.rfc4514_string(), _names(leaf), leaf.not_valid_after_utc)


def read_roots(ca: PemFile) -> bytes:
    """Read and check CA certificates (a bundle: during a CA rotation it holds the old and the new one)."""
    data, certs = _certificates(ca)
    problems = [why for c in certs if (why := _valid_now(c)) is not None]
    if len(problems) == len(certs):
        raise ca.refuse(
            problems[0] if len(certs) == 1 else f"no certificate is valid now ({problems[0]}, ...)"
        )
    return data


# --- server side ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerFiles:
    identity: Identity
    #: PEM CA certificates clients must present a certificate signed by (None: no client certificates)
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.identity.key, self.identity.chain)], root_certificates=self.client_ca
        )

    def describe(self) -> dict[str, Any]:
        return {**self.identity.describe(), "client_certificates": self.client_ca is not None}


class ServerTLS:
    """A server's TLS credentials that follow their files.

    gRPC asks `_fetch` before each new connection's handshake: it stats the files and re-reads them only
    when one changed, so a rotated certificate, key or client CA is used from the next connection on,
    without a restart. Connections already open keep the certificate they were made with; the servers'
    max_connection_age (services.common.server.server_options) closes each within a minute, and clients
    reconnect through a new handshake. A changed file that does not check out is refused, the log says
    why, and the files in force stay in force."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self._cert = PemFile("--tls-cert", cert)
        self._key = PemFile("--tls-key", key)
        self._client_ca = None if client_ca is None else PemFile("--tls-client-ca", client_ca)
        self.mutual = client_ca is not None
        self.files = WatchedFile(
            cert,
            lambda _: self._read(),
            "TLS certificates",
            ServerFiles.describe,
            also=[key] if client_ca is None else [key, client_ca],
        )
        # gRPC may fetch from several of its threads at once.
        self._lock = threading.Lock()
        self._handed = self.files.reloads

    def _read(self) -> ServerFiles:
        identity = read_identity(self._cert, self._key)
        roots = None if self._client_ca is None else read_roots(self._client_ca)
        return ServerFiles(identity, roots)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.files.value.configuration(),
            self._fetch,  # type: ignore[arg-type]  # grpc-stubs: the fetcher may return None (grpc's docs)
            require_client_authentication=self.mutual,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The configuration for the next handshake when the files changed; None keeps the one in force."""
        try:
            with self._lock:
                self.files.poll()
                if self.files.reloads == self._handed:
                    return None
                self._handed = self.files.reloads
                return self.files.value.configuration()
        except Exception:  # an exception here would fail the handshake: keep serving what works
            log.exception("TLS reload failed; the certificates in force stay")
            return None


# --- client side ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientFiles:
    #: PEM CA certificates to trust (None: the system's)
    roots: bytes | None
    #: the certificate the client presents (mutual TLS), or None
    identity: Identity | None

    def credentials(self) -> grpc.ChannelCredentials:
        if self.identity is None:
            return grpc.ssl_channel_credentials(self.roots)
        return grpc.ssl_channel_credentials(self.roots, self.identity.key, self.identity.chain)

    def describe(self) -> dict[str, Any]:
        return {"client_certificate": None if self.identity is None else self.identity.describe()}


@dataclass(frozen=True)
class ClientTLS:
    """How a client reaches a TLS server: the CA to trust (None: the system's), its own certificate and key
    for mutual TLS, and the name to expect in the server's certificate (None: the host of the address).

    The files are read when a channel is made, so a new channel uses rotated files; `flags` is the prefix of
    the flags they came from ("--tls", "--backend-tls"), for messages."""

    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None
    flags: str = "--tls"

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError(f"{self.flags}-client-cert and {self.flags}-client-key go together")

    def files(self) -> list[Path]:
        return [p for p in (self.ca, self.client_cert, self.client_key) if p is not None]

    def read(self) -> ClientFiles:
        roots = None if self.ca is None else read_roots(PemFile(f"{self.flags}-ca", self.ca))
        identity = None
        if self.client_cert is not None and self.client_key is not None:
            identity = read_identity(
                PemFile(f"{self.flags}-client-cert", self.client_cert),
                PemFile(f"{self.flags}-client-key", self.client_key),
            )
        return ClientFiles(roots, identity)

    def options(self) -> list[tuple[str, Any]]:
        return [] if self.server_name is None else [("grpc.ssl_target_name_override", self.server_name)]


def channel(target: str, tls: ClientTLS | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to `target`, over TLS when `tls` is given (ConfigError on a bad file)."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.read().credentials(), options=[*options, *tls.options()])


def aio_channel(
    target: str,
    tls: ClientTLS | None,
    options: Sequence[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to `target`, over TLS when `tls` is given (with `credentials` already read from
    its files, or read now)."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    credentials = credentials or tls.read().credentials()
    return grpc.aio.secure_channel(target, credentials, options=[*options, *tls.options()])


# --- the CLI's client flags -----------------------------------------------------------------------------


def add_client_arguments(parser: argparse.ArgumentParser, server: str = "the gateway") -> None:
    """--tls, --tls-ca, --tls-client-cert, --tls-client-key and --tls-server-name on a command that calls
    `server`; `client_from_args` reads them back."""
    group = parser.add_argument_group("TLS")
    group.add_argument("--tls", action="store_true", help=f"call {server} over TLS trusting the system's CAs")
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help=f"PEM CA certificates {server}'s certificate chains to (TLS)",
    )
    group.add_argument(
        "--tls-client-cert",
        type=Path,
        default=None,
        help="PEM certificate to present (a server requiring client certificates: mutual TLS)",
    )
    group.add_argument("--tls-client-key", type=Path, default=None, help="PEM key of --tls-client-cert")
    group.add_argument(
        "--tls-server-name",
        default=None,
        help="name to expect in the server's certificate (default: the host of the address)",
    )


def client_from_args(args: argparse.Namespace) -> ClientTLS | None:
    """The TLS the flags of `add_client_arguments` ask for; None for plaintext (no TLS flag given)."""
    given = (args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name)
    if not args.tls and all(v is None for v in given):
        return None
    return ClientTLS(*given)
