"""The chart's TLS (tls.enabled): every hop handshakes with the certificates a render mounts, through the
services' own TLS code (the gateway to each backend by the name it dials, each probe, the test pod to the
gateway); the chart's own CA and certificates; cert-manager's objects naming what the clients dial; a
Secret of yours mounted by every service; an external Redis over TLS."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services import k8s
from services.cli import build_parser
from services.common.tls import ClientTLS, ServerTLS
from services.healthcheck import health_status
from tests.helm.chart import (
    SERVICES,
    VALUES_FILES,
    Release,
    containers,
    load_values,
    pod_spec,
    probe_target,
    render,
)
from tests.helm.test_consistency import component_class, load_service_config, mounted_files

SERVING = health_pb2.HealthCheckResponse.SERVING
BACKENDS = ("features", "retrieval", "ranking")
TLS_RENDERS = [n for n in VALUES_FILES if load_values(n).get("tls", {}).get("enabled")]
EXISTING = {"tls": {"enabled": True, "existingSecret": "shop-tls"}}


@pytest.fixture(params=[*TLS_RENDERS, "existing-secret"])
def tls_release(request: pytest.FixtureRequest, releases: dict[str, Release]) -> Release:
    if request.param == "existing-secret":
        return Release("existing-secret", EXISTING, render(EXISTING))
    return releases[request.param]


@contextlib.contextmanager
def serving(name: str, tls: ServerTLS) -> Iterator[str]:
    """A gRPC server answering health for `name`, with `tls`; yields its loopback address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    for entry in ("", name):
        servicer.set(entry, SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", tls.credentials())
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def local(tls: ClientTLS, files: dict[str, Path]) -> ClientTLS:
    """`tls` with the container's paths replaced by the local copies of the mounted files."""

    def copy(path: Path | None) -> Path | None:
        return None if path is None else files[str(path)]

    return dataclasses.replace(
        tls, ca=copy(tls.ca), client_cert=copy(tls.client_cert), client_key=copy(tls.client_key)
    )


def dialled_host(address: str) -> str:
    """The host a gRPC target names (what the client checks the certificate against)."""
    return address.removeprefix("dns:///").rsplit(":", 1)[0]


def test_every_hop_handshakes_with_the_mounted_certificates(tls_release: Release, tmp_path: Path) -> None:
    gateway_cfg, _ = load_service_config(tls_release, "gateway", tmp_path)
    to_backends = gateway_cfg.backend_tls()
    assert to_backends is not None and to_backends.client_cert is not None
    for service in SERVICES:
        cfg, _ = load_service_config(tls_release, service, tmp_path)
        deployment = tls_release.component_deployment(service)
        files = mounted_files(tls_release, deployment, tmp_path)
        server = ServerTLS(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)  # the services' own loader
        assert server.mutual is (service != "gateway")
        name = component_class(service).service_name
        with serving(name, server) as address:
            (c,) = containers(deployment)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                target = probe_target(c, probe)
                assert target.tls is not None
                assert health_status(address, target.service, 5.0, local(target.tls, files)) == SERVING
            if service == "gateway":
                continue
            # the gateway dials dns:///<Service FQDN>:port and presents its own certificate
            host = dialled_host(getattr(gateway_cfg, f"{service}_addr"))
            dial = dataclasses.replace(to_backends, server_name=host)
            assert health_status(address, name, 5.0, dial) == SERVING, service
            # a client without a certificate is refused: mutual TLS
            anonymous = dataclasses.replace(dial, client_cert=None, client_key=None)
            assert health_status(address, name, 2.0, anonymous) == health_pb2.HealthCheckResponse.UNKNOWN


def test_the_test_pod_trusts_the_gateways_certificate(tls_release: Release, tmp_path: Path) -> None:
    (pod,) = tls_release.of_kind("Pod")
    (c,) = pod["spec"]["containers"]
    args = build_parser().parse_args(c["args"])
    assert args.command == "recommend" and args.tls_ca is not None
    files = mounted_files(tls_release, pod, tmp_path)
    cfg, _ = load_service_config(tls_release, "gateway", tmp_path)
    with serving("recsys.v1.Gateway", ServerTLS(cfg.tls_cert, cfg.tls_key)) as address:
        tls = ClientTLS(files[str(args.tls_ca)], server_name=dialled_host(args.gateway))
        assert health_status(address, tls=tls) == SERVING
    # the test pod has the CA only, never a key
    assert [p.name for p in files.values()] == ["ca.crt"]


def certificate(data: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(data))


def test_the_charts_own_ca_and_certificates(releases: dict[str, Release]) -> None:
    release = releases["tls"]
    secrets = {s["metadata"]["name"]: s for s in release.of_kind("Secret")}
    ca_secret = secrets["shop-recsys-tls-ca"]
    assert ca_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    ca = certificate(ca_secret["data"]["tls.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    mounted = {
        v["secret"]["secretName"]
        for w in release.workloads()
        for v in pod_spec(w).get("volumes", [])
        if "secret" in v
    }
    assert "shop-recsys-tls-ca" not in mounted, "the CA's key never reaches a pod"
    for service in SERVICES:
        secret = secrets[f"shop-recsys-{service}-tls"]
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["annotations"][
            "recsys/tls-request"
        ]  # kept across upgrades while it matches
        leaf = certificate(secret["data"]["tls.crt"])
        assert certificate(secret["data"]["ca.crt"]) == ca
        leaf.verify_directly_issued_by(ca)
        usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        assert f"shop-recsys-{service}.recs.svc.cluster.local" in dns
        if service == "gateway":  # how clients outside the cluster reach it (values-tls.yaml)
            assert "recs.example.com" in dns
            assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["203.0.113.10"]


def cert_manager_objects(release: Release) -> tuple[dict[str, Any], dict[str, Any]]:
    certificates = {c["metadata"]["name"]: c for c in release.of_kind("Certificate")}
    issuers = {i["metadata"]["name"]: i for i in release.of_kind("Issuer")}
    return certificates, issuers


def test_cert_manager_certificates_name_what_the_clients_dial(
    releases: dict[str, Release], tmp_path: Path
) -> None:
    release = releases["tls-cert-manager"]
    certificates, issuers = cert_manager_objects(release)
    assert not [s for s in release.of_kind("Secret") if s["metadata"]["name"].endswith("-tls")]
    # the self-signed chain: selfSigned Issuer -> CA Certificate -> CA Issuer -> the services' Certificates
    ca = certificates.pop("shop-recsys-tls-ca")
    assert ca["spec"]["isCA"] is True
    assert issuers[ca["spec"]["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
    assert issuers["shop-recsys-tls-ca"]["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    gateway_cfg, _ = load_service_config(release, "gateway", tmp_path)
    for service in SERVICES:
        spec = certificates[f"shop-recsys-{service}-tls"]["spec"]
        assert spec["issuerRef"] == {
            "name": "shop-recsys-tls-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert (spec["duration"], spec["renewBefore"]) == ("720h", "240h")
        deployment = release.component_deployment(service)
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == k8s.TLS_VOLUME]
        assert volume["secret"]["secretName"] == spec["secretName"]
        (c,) = containers(deployment)
        target = probe_target(c, "readinessProbe")
        assert target.tls is not None and target.tls.server_name in spec["dnsNames"]
        if service != "gateway":
            assert dialled_host(getattr(gateway_cfg, f"{service}_addr")) in spec["dnsNames"]
    (pod,) = release.of_kind("Pod")
    gateway_host = dialled_host(build_parser().parse_args(pod["spec"]["containers"][0]["args"]).gateway)
    assert gateway_host in certificates["shop-recsys-gateway-tls"]["spec"]["dnsNames"]


def test_cert_manager_with_an_issuer_of_yours() -> None:
    values = {
        "tls": {
            "enabled": True,
            "certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
        }
    }
    certificates, issuers = cert_manager_objects(Release("issuer", values, render(values)))
    assert not issuers and set(certificates) == {f"shop-recsys-{s}-tls" for s in SERVICES}
    assert all(
        c["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"} for c in certificates.values()
    )


def test_a_secret_of_yours_is_mounted_by_every_service() -> None:
    release = Release("existing-secret", EXISTING, render(EXISTING))
    assert not release.of_kind("Certificate")
    assert not [s for s in release.of_kind("Secret") if "tls" in s["metadata"]["name"]]
    (pod,) = release.of_kind("Pod")
    specs = [pod_spec(release.component_deployment(s)) for s in SERVICES] + [pod["spec"]]
    for spec in specs:
        (volume,) = [v for v in spec["volumes"] if v["name"] == k8s.TLS_VOLUME]
        assert volume["secret"]["secretName"] == "shop-tls"


def test_a_secret_of_yours_or_cert_managers_not_both() -> None:
    import helm_python

    values = {"tls": {"enabled": True, "existingSecret": "mine", "certManager": {"enabled": True}}}
    with pytest.raises(
        helm_python.HelmRenderError, match=r"existingSecret and certManager\.enabled are exclusive"
    ):
        render(values)


def test_without_tls_nothing_of_it_is_rendered(releases: dict[str, Release]) -> None:
    release = releases["default"]
    assert not release.of_kind("Certificate") and not release.of_kind("Issuer")
    assert not [s for s in release.of_kind("Secret") if "tls" in s["metadata"]["name"]]
    for service in SERVICES:
        (c,) = containers(release.component_deployment(service))
        assert not {e["name"] for e in c["env"]} & {"RECSYS_TLS_CERT", "RECSYS_BACKEND_TLS_CA"}


def test_an_external_redis_over_tls_gets_its_ca_and_client_certificate(
    releases: dict[str, Release], tmp_path: Path
) -> None:
    import helm_python

    release = releases["external-redis-tls"]
    cfg, _ = load_service_config(release, "features", tmp_path)
    assert cfg.redis_url.startswith("rediss://")
    tls = cfg.redis_tls()
    assert tls is not None and tls.ca is not None and tls.client_cert is not None
    tls.read()  # the Secret's files (a stand-in: `recsys certs make`) pass the service's own checks
    (volume,) = [
        v for v in pod_spec(release.component_deployment("features"))["volumes"] if v["name"] == "redis-tls"
    ]
    assert volume["secret"]["secretName"] == "redis-client-tls"
    for service in ("gateway", "retrieval", "ranking"):
        assert "redis-tls" not in {
            v["name"] for v in pod_spec(release.component_deployment(service))["volumes"]
        }
    plaintext = {
        "redis": {"enabled": False, "external": {"url": "redis://r:6379/0", "tls": {"existingSecret": "x"}}}
    }
    with pytest.raises(helm_python.HelmRenderError, match="the Redis URL must be rediss://"):
        render(plaintext)
