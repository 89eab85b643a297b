"""deploy/compose/compose.yaml runs what the chart runs: the same args, env, ports, user and read-only
root for every workload, env the service's config loader accepts, and the chart's experiments."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import SERVICE_MODULES, build_parser
from services.common import config
from services.gateway import keys
from tests.helm.chart import ROOT, SERVICES, Release, containers, pod_spec
from tests.helm.test_consistency import component_class

COMPOSE = ROOT / "deploy" / "compose"
#: Env whose value names a place that differs between a cluster and one machine (the gateway's peers,
#: Redis's host) or that Kubernetes fills in: the key must match, the value may not.
PLACES = {"RECSYS_FEATURES_ADDR", "RECSYS_RETRIEVAL_ADDR", "RECSYS_RANKING_ADDR", "RECSYS_REDIS_URL"}
KUBE_ONLY = {"K8S_POD_NAME", "K8S_NAMESPACE", "OTEL_RESOURCE_ATTRIBUTES", "REDIS_PASSWORD"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return data


def substituted(value: object) -> str:
    """A Compose value with `${NAME:-default}` replaced by its default (`${NAME:?msg}` by NAME)."""
    text = str(value)
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: m.group(1), text)


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: substituted(v) for k, v in (service.get("environment") or {}).items()}


def chart_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def workload(release: Release, component: str) -> dict[str, Any]:
    for obj in release.workloads():
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == component:
            return obj
    raise AssertionError(f"no workload {component}")


@pytest.mark.parametrize("name", [*SERVICES, "trainer"])
def test_args_env_and_ports_are_the_charts(releases: dict[str, Release], name: str) -> None:
    release = releases["default"]
    chart = workload(release, name)
    (c,) = containers(chart)
    service = compose()["services"][name]
    assert [substituted(a) for a in service["command"]] == c["args"]
    mine, theirs = compose_env(service), chart_env(c)
    assert set(mine) == set(theirs) - KUBE_ONLY
    for key in set(mine) - PLACES:
        # the telemetry defaults match the chart's without an OTLP endpoint
        assert mine[key] == theirs[key], key
    chart_ports = sorted(p["containerPort"] for p in c.get("ports", []))
    published = sorted(int(substituted(p).rsplit(":", 1)[1]) for p in service.get("ports", []))
    if name == "gateway":
        assert published == chart_ports  # the one port a client reaches
    else:
        assert not published  # backends stay on the Compose network, as behind the cluster's Services
    # the same user and hardening as the pod
    security = c["securityContext"]
    assert (
        service["user"]
        == f"{pod_spec(chart)['securityContext']['runAsUser']}:{pod_spec(chart)['securityContext']['runAsGroup']}"
    )
    assert service["read_only"] is security["readOnlyRootFilesystem"] is True
    assert service["cap_drop"] == security["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in service["tmpfs"]
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])} - {"/tmp"}
    assert {v.split(":")[1] for v in service.get("volumes", [])} == mounts


@pytest.mark.parametrize("name", SERVICES)
def test_the_env_is_what_the_config_loader_reads(name: str, tmp_path: Path) -> None:
    service = compose()["services"][name]
    args = build_parser().parse_args([substituted(a) for a in service["command"]])
    cls = importlib.import_module(SERVICE_MODULES[name]).Config
    known = {config.env_name(f.name) for f in dataclasses.fields(cls)}
    env = compose_env(service)
    assert not {k for k in env if k.startswith(config.ENV_PREFIX)} - known
    if name == "gateway":  # the mounted directories: the repository's experiments, a keys file made here
        env["RECSYS_EXPERIMENTS"] = str(COMPOSE / "experiments" / "experiments.yaml")
        keys.add(tmp_path / "keys.yaml", "local", ["recommend", "feedback"])
        env["RECSYS_API_KEYS_FILE"] = str(tmp_path / "keys.yaml")
    cfg = config.parse(cls, args.flags, env=env)
    assert cfg.host == "0.0.0.0"
    if name == "gateway":
        for peer in ("features", "retrieval", "ranking"):
            port = compose()["services"][peer]["command"][-1]
            assert getattr(cfg, f"{peer}_addr") == f"dns:///{peer}:{port}"


def test_redis_and_the_start_order_follow_the_chart(releases: dict[str, Release]) -> None:
    services = compose()["services"]
    (redis,) = containers(workload(releases["default"], "redis"))
    chart_args = [a.replace("$(REDIS_PASSWORD)", "REDIS_PASSWORD") for a in redis["args"]]
    assert [substituted(a) for a in services["redis"]["command"]] == chart_args
    assert substituted(services["redis"]["image"]) == redis["image"]
    # the trainer first (the chart's pre-install hook), the gateway once every backend is healthy
    for backend in ("features", "retrieval", "ranking"):
        assert services[backend]["depends_on"]["trainer"] == {"condition": "service_completed_successfully"}
        assert services["gateway"]["depends_on"][backend] == {"condition": "service_healthy"}
    assert services["features"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_the_health_checks_name_each_services_entry() -> None:
    for name in SERVICES:
        service = compose()["services"][name]
        port = service["command"][-1]
        expected = component_class(name).service_name
        assert service["healthcheck"]["test"] == [
            "CMD",
            "python",
            "-m",
            "services.healthcheck",
            f"127.0.0.1:{port}",
            expected,
        ]


def test_the_experiments_are_the_charts(releases: dict[str, Release]) -> None:
    (cm,) = [
        o
        for o in releases["default"].of_kind("ConfigMap")
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "experiments"
    ]
    chart = yaml.safe_load(cm["data"]["experiments.yaml"])
    assert yaml.safe_load((COMPOSE / "experiments" / "experiments.yaml").read_text()) == chart
    gateway = compose()["services"]["gateway"]
    source, target, _ = gateway["volumes"][0].split(":")
    assert (Path(source), target) == (Path("./experiments"), "/etc/recsys/experiments")
    assert compose_env(gateway)["RECSYS_EXPERIMENTS"] == f"{target}/experiments.yaml"


def test_the_spools_are_on_volumes_that_outlive_the_container() -> None:
    """Compose's /tmp is a tmpfs, gone with the container: a spool there would not survive a restart."""
    services = compose()["services"]
    for name, variable in (("features", "RECSYS_SPOOL"), ("gateway", "RECSYS_EXPOSURE_SPOOL")):
        spool = compose_env(services[name])[variable]
        named = {
            t: s for s, t, *_ in (v.split(":") for v in services[name]["volumes"]) if not s.startswith(".")
        }
        assert any(
            spool.startswith(target + "/") and source in compose()["volumes"]
            for target, source in named.items()
        ), name


def test_the_gateway_authenticates_with_a_keys_file_git_never_sees() -> None:
    gateway = compose()["services"]["gateway"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in gateway["volumes"])}
    keys_file = Path(compose_env(gateway)["RECSYS_API_KEYS_FILE"])
    assert mounts[str(keys_file.parent)] == "./auth"  # a directory: replaced files reach the gateway
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(COMPOSE / "auth" / keys_file.name)], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "deploy/compose/auth/keys.yaml must be git-ignored"
    assert "recsys keys add --file deploy/compose/auth/keys.yaml" in (COMPOSE / "compose.yaml").read_text()
