"""Policies every rendered object is held to: probes, resources, security, pinned images, HPA + PDB per
Deployment, and NetworkPolicies that admit exactly the intended connections."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from tests.helm.chart import (
    COMPONENT,
    NAMESPACE,
    RELEASE,
    SERVICES,
    WORKLOADS,
    Release,
    containers,
    pod_spec,
    pod_template,
    probe_target,
)
from tests.helm.netpol import Pod, allowed, selects

PINNED_IMAGE = re.compile(
    r"^[a-z0-9][a-z0-9./_-]*(:[0-9]+)?/?[a-z0-9./_-]*:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]*)(@sha256:[a-f0-9]{64})?$"
)


def recsys_image(release: Release) -> str:
    return str(release.values.get("image", {}).get("repository", "recsys"))


def test_every_container_has_startup_readiness_and_liveness_probes(release: Release) -> None:
    for workload in release.workloads():
        if workload["kind"] in ("Job", "CronJob"):
            continue
        for c in containers(workload):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{workload['metadata']['name']}/{c['name']}: no {probe}"


def test_service_containers_probe_health_on_their_port(release: Release) -> None:
    """The kubelet's native gRPC probes; with TLS on, which those cannot speak (they would fail every
    handshake), exec probes running `python -m services.healthcheck` over TLS against the same port and
    health entry, presenting the pod's own certificate (the backends require one): what the clients use."""
    tls = release.values.get("tls", {}).get("enabled", False)
    for service in SERVICES:
        (c,) = containers(release.component_deployment(service))
        (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == "grpc"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            kind = set(c[probe]) & {"grpc", "exec", "httpGet", "tcpSocket"}
            assert kind == ({"exec"} if tls else {"grpc"}), (service, probe)
            target = probe_target(c, probe)
            assert target.port == port, (service, probe)
            if tls:
                assert target.tls is not None and target.tls.server_name, (service, probe)
                files = [target.tls.ca, target.tls.client_cert, target.tls.client_key]
                assert all(f is not None and str(f.parent) in mounts for f in files), (service, probe)
                assert c[probe]["timeoutSeconds"] >= 2, "python starts in about 0.2 s; leave room under load"
        # Backends wait for the first trainer run: the startup probe allows minutes, not seconds.
        startup = c["startupProbe"]
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        assert budget >= (60 if service == "gateway" else 600), (service, budget)


def test_every_container_has_cpu_and_memory_requests_and_limits(release: Release) -> None:
    for obj in release.objects:
        if obj["kind"] not in (*WORKLOADS, "Pod"):
            continue
        spec = obj["spec"] if obj["kind"] == "Pod" else pod_spec(obj)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), (
                    f"{obj['metadata']['name']}/{c['name']}: resources.{kind}"
                )


def _pod_specs(release: Release) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in release.objects:
        if obj["kind"] == "Pod":
            out.append((obj["metadata"]["name"], obj["spec"]))
        elif obj["kind"] in WORKLOADS:
            out.append((f"{obj['kind']}/{obj['metadata']['name']}", pod_spec(obj)))
    return out


def test_every_container_is_locked_down(release: Release) -> None:
    for name, spec in _pod_specs(release):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert isinstance(pod_sc.get("runAsUser"), int) and pod_sc["runAsUser"] > 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert not sc.get("privileged"), where
            # A read-only root needs somewhere to write: /tmp (HOME) is an emptyDir in every pod.
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), where


def test_every_image_is_pinned_never_latest(release: Release) -> None:
    for name, spec in _pod_specs(release):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            match = PINNED_IMAGE.match(c["image"])
            assert match, f"{name}/{c['name']}: image {c['image']!r} has no pinned tag"
            assert match["tag"] != "latest", f"{name}/{c['name']}: {c['image']}"
            assert c.get("imagePullPolicy") in ("IfNotPresent", "Never", "Always")


def test_the_default_tag_is_the_charts_app_version(releases: dict[str, Release]) -> None:
    import yaml

    from tests.helm.chart import CHART

    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image = containers(releases["default"].component_deployment("gateway"))[0]["image"]
    assert image == f"recsys:{app_version}"


def test_every_deployment_has_an_hpa_and_a_pdb_targeting_it(release: Release) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in release.of_kind("HorizontalPodAutoscaler")}
    pdbs = release.of_kind("PodDisruptionBudget")
    for deployment in release.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        hpa = hpas.get(name)
        assert hpa is not None, f"no HPA for {name}"
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns replicas"
        assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"], labels)
        matching = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} PDBs"
        spec = matching[0]["spec"]
        assert ("maxUnavailable" in spec) != ("minAvailable" in spec)
        # A PDB selecting another workload's pods too would block its evictions.
        others = [d for d in release.of_kind("Deployment") if d is not deployment]
        assert not any(selects(spec["selector"], d["spec"]["template"]["metadata"]["labels"]) for d in others)


def test_backend_services_are_headless_and_the_gateway_service_is_not(release: Release) -> None:
    for service in SERVICES:
        deployment = release.component_deployment(service)
        svc = release.get("Service", deployment["metadata"]["name"])
        assert selects(
            {"matchLabels": svc["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"]
        )
        if service == "gateway":
            assert svc["spec"].get("clusterIP") != "None"
        else:
            assert svc["spec"]["clusterIP"] == "None", f"{service} must be headless for round_robin"


def test_redis_is_a_statefulset_with_a_volume_and_a_secret_password(releases: dict[str, Release]) -> None:
    release = releases["default"]
    (sts,) = release.of_kind("StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    (c,) = containers(sts)
    assert any(m["name"] == "data" and m["mountPath"] == "/data" for m in c["volumeMounts"])
    env = {e["name"]: e for e in c["env"]}
    secret_ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = release.get("Secret", secret_ref["name"])
    assert secret_ref["key"] in secret["data"]
    assert "--requirepass" in c["args"] and "$(REDIS_PASSWORD)" in c["args"]
    # The features service authenticates with the same Secret.
    (features,) = containers(release.component_deployment("features"))
    features_env = {e["name"]: e for e in features["env"]}
    assert features_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == secret_ref


def test_trainer_is_a_hook_job_writing_the_pvc_the_backends_mount_read_only(release: Release) -> None:
    (job,) = release.of_kind("Job")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "post-install" in hooks
    assert "pre-upgrade" in hooks
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(job)["volumes"]
        if "persistentVolumeClaim" in v
    }
    (job_c,) = containers(job)
    (mount,) = [m for m in job_c["volumeMounts"] if m["name"] in claims]
    assert not mount.get("readOnly")
    for service in ("features", "retrieval", "ranking"):
        d = release.component_deployment(service)
        volumes = {v["name"]: v for v in pod_spec(d)["volumes"]}
        (c,) = containers(d)
        (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == mount["mountPath"]]
        assert m["readOnly"] is True
        assert volumes[m["name"]]["persistentVolumeClaim"]["claimName"] == claims[mount["name"]]
        assert volumes[m["name"]]["persistentVolumeClaim"]["readOnly"] is True
    # The gateway holds no artifacts.
    gw = release.component_deployment("gateway")
    assert not any("persistentVolumeClaim" in v for v in pod_spec(gw)["volumes"])


def test_experiments_are_mounted_as_a_directory_so_updates_propagate(release: Release) -> None:
    gw = release.component_deployment("gateway")
    (c,) = containers(gw)
    volumes = {v["name"]: v for v in pod_spec(gw)["volumes"]}
    mounts = [m for m in c["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert mounts and all("subPath" not in m for m in mounts)


# --- NetworkPolicy ------------------------------------------------------------------------------------

OUTSIDE = "outside"  # a pod in another namespace
NEIGHBOUR = "neighbour"  # an unrelated pod in the release's namespace
SHOP = "shop-frontend"  # a pod in namespace "shop" (the external-redis values admit only it)
DNS = "kube-dns"
EXTERNAL_REDIS = "external-redis"
EXTERNAL_OTLP = "external-otlp"


def _pods(release: Release) -> dict[str, Pod]:
    """Every pod the release runs (one per workload, labelled as its template) and a few strangers."""
    ns_labels = {"kubernetes.io/metadata.name": NAMESPACE}
    pods: dict[str, Pod] = {}
    for workload in release.workloads():
        labels = dict(pod_template(workload)["metadata"]["labels"])
        ports = {
            p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
            for c in containers(workload)
            for p in c.get("ports", [])
        }
        pods[labels[COMPONENT]] = Pod(labels[COMPONENT], NAMESPACE, labels, ports, ns_labels)

    def stranger(name: str, namespace: str, port: int = 8080, proto: str = "TCP") -> Pod:
        return Pod(
            name, namespace, {"app": name}, {"p": (port, proto)}, {"kubernetes.io/metadata.name": namespace}
        )

    redis_port = int(release.values.get("redis", {}).get("external", {}).get("port", 6379))
    pods[OUTSIDE] = stranger(OUTSIDE, "default")
    pods[NEIGHBOUR] = stranger(NEIGHBOUR, NAMESPACE)
    pods[SHOP] = stranger(SHOP, "shop")
    pods[DNS] = stranger(DNS, "kube-system", 53, "UDP")
    pods[EXTERNAL_REDIS] = stranger(EXTERNAL_REDIS, "data", redis_port)
    pods[EXTERNAL_OTLP] = stranger(EXTERNAL_OTLP, "observability", 4317)
    return pods


def _intended(release: Release, pods: dict[str, Pod]) -> set[tuple[str, str]]:
    """The connections the chart means to allow: (source, destination)."""
    release_pods = {n for n, p in pods.items() if p.labels.get("app.kubernetes.io/instance")}
    strangers = set(pods) - release_pods
    gateway_from = release.values.get("networkPolicy", {}).get("gatewayFrom")
    callers = {SHOP} if gateway_from else strangers
    want = {(s, "gateway") for s in callers}
    want |= {("gateway", b) for b in ("features", "retrieval", "ranking")}
    want.add(("retrieval", "features"))  # the live catalogue's mirror
    redis = release.values.get("redis", {})
    # The retraining CronJob's pods (labelled as the trainer's) read the event stream.
    readers = ["features", *(["trainer"] if release.values.get("trainer", {}).get("schedule") else [])]
    if redis.get("enabled", True):
        want |= {(r, "redis") for r in readers}
    elif redis.get("external", {}).get("url") or redis.get("external", {}).get("existingSecret"):
        want |= {(r, EXTERNAL_REDIS) for r in readers}
    talkers = release_pods - {"redis"}
    want |= {(s, DNS) for s in talkers}
    if "otel-collector" in release_pods:
        want |= {(s, "otel-collector") for s in talkers}
        # The collector exports wherever its exporters are: all egress.
        want |= {("otel-collector", d) for d in pods if d in strangers or d == "gateway"}
    elif release.values.get("telemetry", {}).get("otlpEndpoint"):
        want |= {(s, EXTERNAL_OTLP) for s in talkers}
    # Strangers are not under the release's policies: among themselves anything goes.
    want |= {(s, d) for s in strangers for d in strangers}
    return want


def test_network_policies_admit_exactly_the_intended_connections(release: Release) -> None:
    policies = release.of_kind("NetworkPolicy")
    assert policies
    pods = _pods(release)
    actual = {
        (s, d)
        for s in pods
        for d in pods
        if s != d
        and any(allowed(policies, pods[s], pods[d], port, proto) for port, proto in pods[d].ports.values())
    }
    intended = {(s, d) for s, d in _intended(release, pods) if s != d}
    assert sorted(actual - intended) == [], "allowed but not intended"
    assert sorted(intended - actual) == [], "intended but denied"


def test_network_policy_ports_are_exact(releases: dict[str, Release]) -> None:
    """The gateway reaches each backend only on its gRPC port, not on any other port of the pod."""
    release = releases["default"]
    policies = release.of_kind("NetworkPolicy")
    pods = _pods(release)
    assert allowed(policies, pods["gateway"], pods["ranking"], 50054)
    assert not allowed(policies, pods["gateway"], pods["ranking"], 50053)
    assert not allowed(policies, pods["features"], pods["redis"], 6380)
    assert allowed(policies, pods["features"], pods[DNS], 53, "UDP")
    assert not allowed(policies, pods["redis"], pods[DNS], 53, "UDP")


def test_the_gateway_reads_its_keys_from_a_secret_mounted_as_a_directory(release: Release) -> None:
    from services import k8s

    auth = release.values.get("components", {}).get("gateway", {}).get("auth", {})
    expected = auth.get("existingSecret") or f"{RELEASE}-recsys-gateway-auth"
    gateway = release.component_deployment("gateway")
    (c,) = containers(gateway)
    path = {e["name"]: e.get("value") for e in c["env"]}["RECSYS_API_KEYS_FILE"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == k8s.KEYS_VOLUME]
    # a directory (no subPath): the kubelet's update of a rotated Secret reaches the running pod
    assert mount["mountPath"] == posixpath.dirname(path) and mount["readOnly"] is True
    assert "subPath" not in mount
    (volume,) = [v for v in pod_spec(gateway)["volumes"] if v["name"] == k8s.KEYS_VOLUME]
    assert volume["secret"]["secretName"] == expected
    # the keys file only: the plain smoke key is not in the gateway's pods
    assert volume["secret"]["items"] == [{"key": "keys.yaml", "path": posixpath.basename(path)}]
    # `helm test` authenticates with the Secret's smoke key
    (test_pod,) = release.of_kind("Pod")
    (test_container,) = test_pod["spec"]["containers"]
    ref = {e["name"]: e for e in test_container["env"]}["RECSYS_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (expected, k8s.SMOKE_KEY)
    assert ref.get("optional", False) is bool(auth.get("existingSecret"))
    made = [s for s in release.of_kind("Secret") if s["metadata"]["name"] == expected]
    assert len(made) == (0 if auth.get("existingSecret") else 1)
    assert all(set(s["data"]) == {"keys.yaml", k8s.SMOKE_KEY} for s in made)


#: Env naming files a service writes (its root filesystem is read-only).
WRITTEN_FILES = ("RECSYS_EVENT_LOG", "RECSYS_SPOOL", "RECSYS_EXPOSURE_SPOOL")


def test_files_the_services_write_are_on_writable_volumes_that_outlive_the_container(
    release: Release,
) -> None:
    """The spools must survive a container restart (an emptyDir does; the root filesystem is read-only)."""
    found = 0
    for workload in release.workloads():
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(workload):
            mounts = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
            for env in c.get("env", []):
                if env["name"] not in WRITTEN_FILES:
                    continue
                found += 1
                path = env["value"]
                (mount,) = [m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")]
                assert set(volumes[mount["name"]]) & {"emptyDir", "persistentVolumeClaim"}, (env, mount)
                assert volumes[mount["name"]].get("emptyDir", {}).get("medium") != "Memory", env
    assert found >= 3
