"""Render the chart offline (helm-python-sdk, the Helm v4 SDK) and look at the objects it makes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services import healthcheck
from services.common.tls import ClientTLS, client_from_args

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "recsys"
RELEASE = "shop"
NAMESPACE = "recs"
#: The values files the chart is held to: name -> file (None: the chart's defaults only).
VALUES_FILES: dict[str, Path | None] = {
    "default": None,
    "kind": CHART / "values-kind.yaml",
    "minikube": CHART / "values-minikube.yaml",
    "external-redis": CHART / "ci" / "values-external-redis.yaml",
    "external-redis-url": CHART / "ci" / "values-external-redis-url.yaml",
    "external-redis-tls": CHART / "ci" / "values-external-redis-tls.yaml",
    "metrics": CHART / "ci" / "values-metrics.yaml",
    "tls": CHART / "ci" / "values-tls.yaml",
    "tls-cert-manager": CHART / "ci" / "values-tls-cert-manager.yaml",
    "retrain": CHART / "ci" / "values-retrain.yaml",
}
KUBE_VERSIONS = ("1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
SERVICES = ("gateway", "features", "retrieval", "ranking")
COMPONENT = "app.kubernetes.io/component"

Obj = dict[str, Any]


def load_values(name: str) -> dict[str, Any]:
    path = VALUES_FILES[name]
    return {} if path is None else dict(yaml.safe_load(path.read_text()) or {})


def render(values: dict[str, Any], *, upgrade: bool = False) -> dict[str, str]:
    """template path -> rendered text (raises helm_python.HelmValuesError / HelmRenderError)."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    return chart.render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=not upgrade, is_upgrade=upgrade, revision=1
    )


def objects(rendered: dict[str, str]) -> list[Obj]:
    """Every Kubernetes object of a render (NOTES.txt excluded)."""
    out: list[Obj] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return out


class Release:
    """The objects of one render, with lookups the tests share."""

    def __init__(self, name: str, values: dict[str, Any], rendered: dict[str, str]) -> None:
        self.name = name
        self.values = values
        self.rendered = rendered
        self.objects = objects(rendered)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
        return found[0]

    def workloads(self) -> Iterator[Obj]:
        """Deployments, StatefulSets, Jobs and CronJobs (what runs containers long-term, once or on a
        schedule)."""
        for o in self.objects:
            if o["kind"] in WORKLOADS:
                yield o

    def component_deployment(self, service: str) -> Obj:
        found = [d for d in self.of_kind("Deployment") if d["metadata"]["labels"].get(COMPONENT) == service]
        assert len(found) == 1, f"Deployment of {service}: {len(found)}"
        return found[0]

    def config_map_files(self) -> dict[str, dict[str, str]]:
        return {c["metadata"]["name"]: dict(c.get("data") or {}) for c in self.of_kind("ConfigMap")}


WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")


def pod_template(workload: Obj) -> Obj:
    """The pod template of a workload (a CronJob's: its job template's)."""
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    template: Obj = spec["template"]
    return template


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = pod_template(workload)["spec"]
    return spec


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


#: What an exec probe runs to check health (services/healthcheck.py), and its TLS flags.
HEALTHCHECK = ["python", "-m", "services.healthcheck"]


@dataclass(frozen=True)
class ProbeTarget:
    """Where a probe asks for health: the port, the health entry, and the TLS it speaks (None: plaintext)."""

    port: int
    service: str
    tls: ClientTLS | None


def probe_target(container: Obj, probe: str) -> ProbeTarget:
    """A native gRPC probe, or an exec probe running services.healthcheck (parsed by its own parser)."""
    spec = container[probe]
    if "grpc" in spec:
        return ProbeTarget(int(spec["grpc"]["port"]), str(spec["grpc"].get("service", "")), None)
    command = spec["exec"]["command"]
    assert command[:3] == HEALTHCHECK, command
    args = healthcheck.parser().parse_args(command[3:])
    host, port = args.address.rsplit(":", 1)
    assert host == "127.0.0.1", "the probe runs in the pod and asks its own container"
    return ProbeTarget(int(port), args.service, client_from_args(args))
