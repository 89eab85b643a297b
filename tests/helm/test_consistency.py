"""What the chart runs is what the code accepts: each container's args and env go through the CLI's own
parser and config loader, ports agree between config, container, Service and probes, and the probes
ask for the service's real health name."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services import certs
from services.cli import SERVICE_MODULES, build_parser
from services.common import config
from services.gateway import keys
from tests.helm.chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    SERVICES,
    Release,
    containers,
    pod_spec,
    probe_target,
    render,
)

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SECRET = "s3cret"


def kube_env(container: dict[str, Any], files: dict[str, Path]) -> dict[str, str]:
    """The environment the kubelet gives the container: $(VAR) expanded from earlier entries, Secrets and
    the downward API replaced by placeholders, mounted paths redirected to `files`."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            value = VAR_REF.sub(lambda m: env.get(m[1], m[0]), str(entry["value"]))
        elif "secretKeyRef" in entry["valueFrom"]:
            value = SECRET
        else:
            value = "from-" + entry["valueFrom"]["fieldRef"]["fieldPath"]
        env[entry["name"]] = str(files.get(value, value))
    return env


def tls_stand_in(tmp_path: Path) -> dict[str, str]:
    """What the documentation asks of a TLS Secret the chart does not make (tls.existingSecret, or
    cert-manager's): `recsys certs make --release R -n NS`'s certificate. One CA per test (`tmp_path`), so
    the stand-ins of the gateway and the backends trust each other."""
    directory = tmp_path / "existing-secret-tls"
    if not directory.exists():
        certs.make(directory, certs.chart_names(RELEASE, NAMESPACE))
    return {name: (directory / name).read_text() for name in ("tls.crt", "tls.key", "ca.crt")}


def secret_files(release: Release, volume: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """filename -> text of a Secret volume (its `items` only, when listed). A Secret the chart does not make
    (an existingSecret, or cert-manager's) holds what the chart's documentation asks of it: for the gateway,
    a keys file; for a service's TLS, a certificate naming the release's Services."""
    secret = volume["secret"]
    made = [s for s in release.of_kind("Secret") if s["metadata"]["name"] == secret["secretName"]]
    items = secret.get("items")
    if made:
        data = {k: base64.b64decode(v).decode() for k, v in made[0].get("data", {}).items()}
    elif items and {i["key"] for i in items} <= {"tls.crt", "tls.key", "ca.crt"}:
        data = tls_stand_in(tmp_path)
    else:
        stand_in = tmp_path / "existing-secret" / "keys.yaml"
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        keys.add(stand_in, "backend-1", ["recommend", "feedback"])
        data = {"keys.yaml": stand_in.read_text()}
    return {i["path"]: data[i["key"]] for i in items} if items else data


def mounted_files(release: Release, workload: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    """container path -> a local copy, for every file of every ConfigMap and Secret the container mounts
    (a workload, or a bare Pod such as the test pod)."""
    spec = workload["spec"] if workload["kind"] == "Pod" else pod_spec(workload)
    volumes = {v["name"]: v for v in spec["volumes"]}
    maps = release.config_map_files()
    out: dict[str, Path] = {}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for m in c.get("volumeMounts", []):
            volume = volumes[m["name"]]
            if "configMap" in volume:
                files = maps[volume["configMap"]["name"]]
            elif "secret" in volume:
                files = secret_files(release, volume, tmp_path)
            else:
                continue
            for filename, text in files.items():
                local = tmp_path / workload["metadata"]["name"] / m["name"] / filename
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(text)
                out[f"{m['mountPath']}/{filename}"] = local
    return out


def component_class(service: str) -> Any:
    module = importlib.import_module(SERVICE_MODULES[service])
    (cls,) = {
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and isinstance(getattr(v, "service_name", None), str)
        and getattr(v, "name", None) == service
    }
    return cls


def load_service_config(release: Release, service: str, tmp_path: Path) -> tuple[Any, dict[str, str]]:
    deployment = release.component_deployment(service)
    (c,) = containers(deployment)
    assert "command" not in c, "the image's entrypoint (recsys) runs"
    args = build_parser().parse_args(c["args"])
    assert (args.command, args.service) == ("serve", service)
    env = kube_env(c, mounted_files(release, deployment, tmp_path))
    cls = importlib.import_module(SERVICE_MODULES[service]).Config
    known = {config.env_name(f.name) for f in dataclasses.fields(cls)}
    unknown = {n for n in env if n.startswith(config.ENV_PREFIX)} - known
    assert not unknown, f"{service}: the config loader ignores {sorted(unknown)}"
    return config.parse(cls, args.flags, env=env), env


@pytest.mark.parametrize("service", SERVICES)
def test_args_and_env_are_accepted_by_the_cli_and_config_loader(
    release: Release, service: str, tmp_path: Path
) -> None:
    cfg, env = load_service_config(release, service, tmp_path)
    assert cfg.host == "0.0.0.0"
    assert env["OTEL_SERVICE_NAME"] == f"recsys-{service}"
    collector = release.values.get("otelCollector", {}).get("enabled", False)
    external = release.values.get("telemetry", {}).get("otlpEndpoint")
    if collector or external:
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317")
    else:
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


@pytest.mark.parametrize("service", SERVICES)
def test_ports_agree_between_config_container_service_and_probes(
    release: Release, service: str, tmp_path: Path
) -> None:
    cfg, env = load_service_config(release, service, tmp_path)
    deployment = release.component_deployment(service)
    (c,) = containers(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    svc = release.get("Service", deployment["metadata"]["name"])
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    expected = {"grpc": cfg.port}
    if env["OTEL_METRICS_EXPORTER"] == "prometheus":
        expected["metrics"] = cfg.metrics_port  # the scrape port the service opens
    assert ports == expected
    assert {n: p["port"] for n, p in svc_ports.items()} == expected
    assert all(p["targetPort"] in (n, expected[n]) for n, p in svc_ports.items())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe_target(c, probe).port == cfg.port


@pytest.mark.parametrize("service", SERVICES)
def test_probes_name_the_services_health_entry(release: Release, service: str) -> None:
    from recsys.v1 import features_pb2, gateway_pb2, ranking_pb2, retrieval_pb2

    declared = {
        s.full_name
        for m in (gateway_pb2, features_pb2, retrieval_pb2, ranking_pb2)
        for s in m.DESCRIPTOR.services_by_name.values()
    }
    (c,) = containers(release.component_deployment(service))
    expected = component_class(service).service_name
    assert expected in declared
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # services.common.server sets the status of "" and of the full service name; the probes ask for the
        # latter, which says more.
        assert probe_target(c, probe).service == expected


def test_gateway_reaches_each_backend_through_its_headless_service(release: Release, tmp_path: Path) -> None:
    cfg, _ = load_service_config(release, "gateway", tmp_path)
    for backend in ("features", "retrieval", "ranking"):
        deployment = release.component_deployment(backend)
        svc = release.get("Service", deployment["metadata"]["name"])
        port = svc["spec"]["ports"][0]["port"]
        assert (
            getattr(cfg, f"{backend}_addr")
            == f"dns:///{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"
        )
        assert svc["spec"]["clusterIP"] == "None"


def test_gateway_reads_the_experiments_configmap_and_budgets_from_values(
    release: Release, tmp_path: Path
) -> None:
    from services.gateway import experiments

    cfg, _ = load_service_config(release, "gateway", tmp_path)
    # The config loader already parsed the ConfigMap's file with the gateway's own experiments loader.
    experiments.load(cfg.experiments)  # raises on a file the gateway would refuse
    document = yaml.safe_load(cfg.experiments.read_text())
    ids = [e["id"] for e in release.values.get("experiments", [{"id": "candidates"}])]
    assert [e["id"] for e in document["experiments"]] == ids
    gw_config = {
        "totalBudgetMs": 100.0,
        "featuresBudgetMs": 25.0,
        "retrievalBudgetMs": 30.0,
        "rankingBudgetMs": 40.0,
    }
    gw_config.update(release.values.get("components", {}).get("gateway", {}).get("config", {}))
    assert cfg.total_budget_ms == gw_config["totalBudgetMs"]
    assert cfg.features_budget_ms == gw_config["featuresBudgetMs"]
    assert cfg.retrieval_budget_ms == gw_config["retrievalBudgetMs"]
    assert cfg.ranking_budget_ms == gw_config["rankingBudgetMs"]


def test_backends_serve_the_mounted_artifacts_and_poll_for_new_versions(
    release: Release, tmp_path: Path
) -> None:
    (job,) = release.of_kind("Job")
    train = build_parser().parse_args(containers(job)[0]["args"])
    assert train.command == "train"
    for backend in ("features", "retrieval", "ranking"):
        cfg, _ = load_service_config(release, backend, tmp_path / backend)
        assert cfg.artifacts_dir == train.out
        assert cfg.reload_interval_s <= 30


def test_features_store_url(release: Release, tmp_path: Path) -> None:
    cfg, _ = load_service_config(release, "features", tmp_path)
    redis = release.values.get("redis", {})
    if redis.get("enabled", True):
        (svc,) = [
            s
            for s in release.of_kind("Service")
            if s["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"
        ]
        assert (
            cfg.redis_url
            == f"redis://:{SECRET}@{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:6379/0"
        )
    elif redis.get("external", {}).get("existingSecret"):
        assert cfg.redis_url == SECRET
    else:
        assert cfg.redis_url == redis["external"]["url"]
    features = release.values.get("components", {}).get("features", {}).get("config", {})
    assert cfg.events_max_len == features.get("eventsMaxLen", 0)
    assert cfg.events_max_age_days == features.get("eventsMaxAgeDays", 0)
    # The embedded store's event log (unused with Redis) is on a writable volume, not the read-only root.
    assert str(cfg.event_log).startswith("/var/lib/recsys/")


def test_trainer_job_is_accepted_by_the_train_parser(release: Release) -> None:
    (job,) = release.of_kind("Job")
    (c,) = containers(job)
    args = build_parser().parse_args(c["args"])
    assert args.command == "train" and args.no_progress
    # The data it trains on is in the image.
    assert f"COPY data/ml-latest-small {args.data}" in (ROOT / "Dockerfile").read_text()


def test_the_retraining_cronjob_runs_the_gated_train_on_the_features_event_stream(
    release: Release, tmp_path: Path
) -> None:
    """trainer.schedule: a CronJob (never two runs at once) whose pod is the hook Job's but for its
    arguments and the Redis URL, and whose `recsys train` reads the stream the features service writes."""
    trainer = release.values.get("trainer", {})
    cronjobs = release.of_kind("CronJob")
    if not trainer.get("schedule"):
        assert cronjobs == []
        return
    (cron,) = cronjobs
    (job,) = release.of_kind("Job")
    spec = cron["spec"]
    retrain = trainer.get("retrain", {})
    assert spec["schedule"] == trainer["schedule"] and spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == retrain.get("successfulJobsHistoryLimit", 3)
    assert spec["failedJobsHistoryLimit"] == retrain.get("failedJobsHistoryLimit", 3)
    assert spec["startingDeadlineSeconds"] == retrain.get("startingDeadlineSeconds", 600)
    assert spec.get("timeZone") == (retrain.get("timeZone") or None)
    cron_pod, job_pod = pod_spec(cron), pod_spec(job)
    (cron_c,), (job_c,) = containers(cron), containers(job)
    assert {k: v for k, v in cron_pod.items() if k != "containers"} == {
        k: v for k, v in job_pod.items() if k != "containers"
    }
    for key in ("image", "resources", "securityContext", "volumeMounts"):
        assert cron_c[key] == job_c[key], key
    files = mounted_files(release, cron, tmp_path / "cron")
    env = kube_env(cron_c, files)
    args = build_parser().parse_args([VAR_REF.sub(lambda m: env[m[1]], a) for a in cron_c["args"]])
    assert args.command == "train" and args.gate and args.no_progress
    assert args.gate_tolerance == retrain.get("gateTolerance", 0.005) and args.keep == retrain.get("keep", 10)
    train = build_parser().parse_args(job_c["args"])
    assert (args.data, args.out) == (train.data, train.out)
    features, _ = load_service_config(release, "features", tmp_path / "features")
    assert (args.events, args.events_prefix) == (features.redis_url, features.redis_prefix)


def test_the_image_matches_what_the_chart_assumes(releases: dict[str, Release]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["recsys"]' in dockerfile
    uid = int(re.findall(r"^ARG UID=(\d+)$", dockerfile, re.M)[-1])
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", dockerfile, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in dockerfile and "HOME=/tmp" in dockerfile
    release = releases["default"]
    for service in SERVICES:
        assert pod_spec(release.component_deployment(service))["securityContext"]["runAsUser"] == uid
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "**" in dockerignore and "!data/ml-latest-small/" in dockerignore
    # Builds offline with either builder: no frontend image to fetch, the base image a build argument,
    # the extra CA certificates for pip in the build stage only (never in the published stage).
    assert not re.search(r"^#\s*syntax=", dockerfile, re.M | re.I)
    assert re.search(r"^ARG PYTHON_IMAGE=", dockerfile, re.M)
    build, runtime = dockerfile.split("AS runtime", 1)
    assert "EXTRA_CA_CERTS" in build and "EXTRA_CA_CERTS" not in runtime and "PIP_CERT" not in runtime


def test_schema_config_keys_are_service_flags() -> None:
    """values: components.<name>.config.<camelCase> becomes RECSYS_<SNAKE>; each must be a real flag."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    for service in SERVICES:
        cls = importlib.import_module(SERVICE_MODULES[service]).Config
        fields = {f.name for f in dataclasses.fields(cls)}
        props = schema["properties"]["components"]["properties"][service]["allOf"][1]["properties"]["config"][
            "properties"
        ]
        for key in props:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
            assert snake in fields, f"components.{service}.config.{key}: no --{snake.replace('_', '-')} flag"


RECOMMEND, FEEDBACK = "/recsys.v1.Gateway/Recommend", "/recsys.v1.Gateway/Feedback"


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def smoke_key(release: Release) -> str:
    from services import k8s

    (secret,) = [s for s in release.of_kind("Secret") if k8s.SMOKE_KEY in s.get("data", {})]
    return base64.b64decode(secret["data"][k8s.SMOKE_KEY]).decode()


def test_the_gateway_accepts_the_rendered_keys_and_the_smoke_key_may_only_recommend(
    release: Release, tmp_path: Path
) -> None:
    from services.gateway import auth

    cfg, _ = load_service_config(release, "gateway", tmp_path)
    assert cfg.api_keys_file is not None and not cfg.allow_unauthenticated
    authorizer = auth.Authorizer(cfg.api_keys_file)  # the gateway's own loader, on the mounted file
    if release.values.get("components", {}).get("gateway", {}).get("auth", {}).get("existingSecret"):
        return  # the operator's keys: the stand-in proves only that the env and mount lead to a keys file
    key = smoke_key(release)
    assert auth.names(authorizer.keys.value) == ["smoke"]
    assert authorizer.check(RECOMMEND, bearer(key)) is None
    denied = authorizer.check(FEEDBACK, bearer(key))
    assert denied is not None and denied.reason == "role"


def test_keys_from_values_are_served_beside_the_smoke_key(tmp_path: Path) -> None:
    from services.gateway import auth

    mine = keys.generate()
    values = {
        "components": {
            "gateway": {
                "auth": {
                    "keys": [
                        {"name": "shop", "sha256": keys.digest(mine), "roles": ["recommend", "feedback"]}
                    ],
                    "requireForReflection": True,
                }
            }
        }
    }
    release = Release("keys", values, render(values))
    cfg, _ = load_service_config(release, "gateway", tmp_path)
    assert cfg.auth_reflection and not cfg.auth_health and cfg.api_keys_file is not None
    authorizer = auth.Authorizer(cfg.api_keys_file, reflection=True)
    assert auth.names(authorizer.keys.value) == ["shop", "smoke"]
    assert authorizer.check(FEEDBACK, bearer(mine)) is None
    assert authorizer.check(RECOMMEND, bearer(smoke_key(release))) is None


def test_without_auth_the_gateway_serves_openly_on_purpose(tmp_path: Path) -> None:
    from services import k8s

    values = {"components": {"gateway": {"auth": {"enabled": False}}}}
    release = Release("open", values, render(values))
    cfg, env = load_service_config(release, "gateway", tmp_path)
    assert cfg.host == "0.0.0.0" and cfg.allow_unauthenticated and cfg.api_keys_file is None
    assert env["RECSYS_ALLOW_UNAUTHENTICATED"] == "true"
    assert not [s for s in release.of_kind("Secret") if k8s.SMOKE_KEY in s.get("data", {})]
    gateway = release.component_deployment("gateway")
    assert k8s.KEYS_VOLUME not in {v["name"] for v in pod_spec(gateway)["volumes"]}
    (test_pod,) = release.of_kind("Pod")
    assert "RECSYS_API_KEY" not in {e["name"] for e in test_pod["spec"]["containers"][0]["env"]}
    # and without that variable, the gateway refuses to listen on 0.0.0.0 with no keys
    (c,) = containers(gateway)
    args = build_parser().parse_args(c["args"])
    closed = {k: v for k, v in env.items() if k != "RECSYS_ALLOW_UNAUTHENTICATED"}
    with pytest.raises(config.ConfigError, match=r"--host 0\.0\.0\.0 is reachable from other machines"):
        config.parse(importlib.import_module(SERVICE_MODULES["gateway"]).Config, args.flags, env=closed)


def test_the_schema_knows_the_keys_files_rules() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    entry = schema["definitions"]["gatewayComponent"]["properties"]["auth"]["properties"]["keys"]["items"]
    assert tuple(entry["properties"]["roles"]["items"]["enum"]) == keys.ROLES
    assert entry["properties"]["name"]["pattern"] == keys.NAME.pattern
    assert entry["properties"]["sha256"]["pattern"] == keys.SHA256.pattern
    assert set(entry["properties"]) == set(keys.FIELDS)
