"""The chart renders for every values file, lints clean, and every object is valid Kubernetes 1.28-1.33."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.helm import cert_manager
from tests.helm.chart import (
    CHART,
    COMPONENT,
    KUBE_VERSIONS,
    NAMESPACE,
    SERVICES,
    VALUES_FILES,
    Release,
    load_values,
)


@pytest.mark.parametrize("kube_version", [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]])
@pytest.mark.parametrize("values_name", list(VALUES_FILES))
def test_lint_strict_has_no_errors_or_warnings(values_name: str, kube_version: str) -> None:
    import helm_python

    report = helm_python.lint(
        str(CHART),
        load_values(values_name),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}",
    )
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; strict lint treats warnings as errors, and so do we.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


#: (version, object JSON) -> error or None: identical objects of different renders are validated once.
_VALIDATED: dict[tuple[str, str], str | None] = {}


def _validate(obj: dict[str, Any], version: str) -> str | None:
    import kubernetes_validate

    if str(obj.get("apiVersion", "")).startswith("cert-manager.io/"):
        return cert_manager.validate(obj)  # CRDs: not in the Kubernetes schemas
    key = (version, json.dumps(obj, sort_keys=True))
    if key not in _VALIDATED:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            _VALIDATED[key] = None
        except kubernetes_validate.ValidationError as e:
            _VALIDATED[key] = str(e.message)
    return _VALIDATED[key]


def test_every_object_validates_strictly_against_each_kubernetes_version(release: Release) -> None:
    assert release.objects
    failures = [
        f"{version} {obj['kind']}/{obj['metadata']['name']}: {error}"
        for obj in release.objects
        for version in KUBE_VERSIONS
        if (error := _validate(obj, version)) is not None
    ]
    assert failures == []


def test_the_validator_rejects_what_it_should() -> None:
    """kubernetes-validate strict really checks: an unknown field and a wrong type are refused."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    assert _validate(bad, KUBE_VERSIONS[0]) is not None
    wrong = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "2"},
    }
    assert _validate(wrong, KUBE_VERSIONS[-1]) is not None


def test_renders_the_whole_platform(release: Release) -> None:
    kinds = {(o["kind"], o["metadata"]["labels"]["app.kubernetes.io/component"]) for o in release.objects}
    for service in ("gateway", "features", "retrieval", "ranking"):
        for kind in (
            "Deployment",
            "Service",
            "ServiceAccount",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
        ):
            assert (kind, service) in kinds, f"{kind} of {service}"
    assert ("Job", "trainer") in kinds
    assert ("PersistentVolumeClaim", "artifacts") in kinds
    assert ("ConfigMap", "experiments") in kinds
    redis = bool(release.values.get("redis", {}).get("enabled", True))
    assert (("StatefulSet", "redis") in kinds) is redis
    assert (("Secret", "redis") in kinds) is redis
    # the chart's keys Secret, unless the user brings one
    auth = release.values.get("components", {}).get("gateway", {}).get("auth", {})
    assert (("Secret", "gateway") in kinds) is not auth.get("existingSecret")
    collector = bool(release.values.get("otelCollector", {}).get("enabled", False))
    assert (("Deployment", "otel-collector") in kinds) is collector
    assert all(o["metadata"].get("namespace") in (None, NAMESPACE) for o in release.objects)


def test_metrics_follow_the_exporter_and_prometheus_opens_a_scrape_port(
    releases: dict[str, Release],
) -> None:
    def env(container: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: e.get("value", "") for e in container.get("env", [])}

    for name, expected in (("default", "none"), ("external-redis", "otlp"), ("metrics", "prometheus")):
        release = releases[name]
        for service in SERVICES:
            pod = release.component_deployment(service)["spec"]["template"]
            container = pod["spec"]["containers"][0]
            assert env(container)["OTEL_METRICS_EXPORTER"] == expected, (name, service)
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            scraped = expected == "prometheus"
            assert ("metrics" in ports) is scraped, (name, service)
            assert ("--metrics-port" in container["args"]) is scraped, (name, service)
            if scraped:
                assert ports["metrics"] == 9464
                assert container["args"][container["args"].index("--metrics-port") + 1] == "9464"
                assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9464"
                service_ports = {
                    p["name"]: p["port"]
                    for s in release.of_kind("Service")
                    if s["metadata"]["labels"].get(COMPONENT) == service
                    for p in s["spec"]["ports"]
                }
                assert service_ports["metrics"] == 9464
                policy = next(
                    p
                    for p in release.of_kind("NetworkPolicy")
                    if p["metadata"]["labels"][COMPONENT] == service
                )
                scrape = [
                    r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": 9464} in r["ports"]
                ]
                assert scrape and scrape[0]["from"] == release.values["telemetry"]["metrics"]["scrapeFrom"]
    collector = yaml.safe_load(
        next(
            o
            for o in releases["metrics"].of_kind("ConfigMap")
            if o["metadata"]["labels"][COMPONENT] == "otel-collector"
        )["data"]["config.yaml"]
    )
    assert collector["service"]["pipelines"]["metrics"]["receivers"] == ["otlp"]
