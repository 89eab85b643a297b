"""`recsys k8s smoke` without a cluster: its verdicts on real kubernetes.client model objects."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k

from services import k8s
from services.cli import build_parser
from services.common.tls import ClientTLS, client_from_args


def meta(name: str, component: str = "gateway", **kwargs: Any) -> k.V1ObjectMeta:
    labels = {k8s.INSTANCE_LABEL: "shop", k8s.NAME_LABEL: "recsys", k8s.COMPONENT_LABEL: component}
    return k.V1ObjectMeta(name=name, labels=labels, **kwargs)


def deployment(
    name: str, component: str, replicas: int = 2, ready: int = 2, generation: int = 1, **status: Any
) -> k.V1Deployment:
    return k.V1Deployment(
        metadata=meta(name, component, generation=generation),
        spec=k.V1DeploymentSpec(
            replicas=replicas, selector=k.V1LabelSelector(), template=k.V1PodTemplateSpec()
        ),
        status=k.V1DeploymentStatus(
            observed_generation=status.pop("observed", 1),
            replicas=status.pop("total", replicas),
            updated_replicas=status.pop("updated", replicas),
            ready_replicas=ready,
            available_replicas=status.pop("available", ready),
            conditions=status.pop("conditions", None),
        ),
    )


def pod(
    name: str,
    component: str = "gateway",
    phase: str = "Running",
    ready: bool = True,
    waiting: str | None = None,
    owner: str | None = None,
) -> k.V1Pod:
    state = (
        k.V1ContainerState(waiting=k.V1ContainerStateWaiting(reason=waiting, message="boom"))
        if waiting
        else k.V1ContainerState(running=k.V1ContainerStateRunning())
    )
    owners = [k.V1OwnerReference(api_version="batch/v1", kind=owner, name="x", uid="1")] if owner else None
    return k.V1Pod(
        metadata=meta(
            name,
            component,
            owner_references=owners,
            creation_timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        ),
        spec=k.V1PodSpec(
            containers=[
                k.V1Container(name=component, ports=[k.V1ContainerPort(container_port=50051, name="grpc")])
            ]
        ),
        status=k.V1PodStatus(
            phase=phase,
            conditions=[k.V1PodCondition(type="Ready", status="True" if ready else "False")],
            container_statuses=[
                k.V1ContainerStatus(
                    name=component,
                    image="recsys:0.1.0",
                    image_id="",
                    ready=ready,
                    restart_count=0,
                    state=state,
                )
            ],
        ),
    )


def job(name: str = "shop-recsys-trainer", **status: Any) -> k.V1Job:
    conditions = [
        k.V1JobCondition(type=t, status="True", reason=r, message="m")
        for t, r in status.pop("conditions", [])
    ]
    return k.V1Job(
        metadata=meta(name, "trainer"), status=k.V1JobStatus(conditions=conditions or None, **status)
    )


def all_deployments() -> list[k.V1Deployment]:
    return [deployment(f"shop-recsys-{s}", s) for s in k8s.SERVICES]


def test_selector_and_matching() -> None:
    selector = k8s.release_selector("shop", "gateway")
    assert selector == "app.kubernetes.io/instance=shop,app.kubernetes.io/component=gateway"
    assert k8s.matches(selector, meta("a").labels)
    assert not k8s.matches(selector, meta("a", "ranking").labels)
    assert not k8s.matches(k8s.release_selector("other"), meta("a").labels)


@pytest.mark.parametrize(
    ("obj", "ready", "failed", "detail"),
    [
        (deployment("d", "gateway"), True, False, "2/2 ready"),
        (deployment("d", "gateway", ready=1), False, False, "1/2 ready"),
        (deployment("d", "gateway", generation=2), False, False, "latest spec"),
        (deployment("d", "gateway", total=3), False, False, "1 old replicas terminating"),
        (
            deployment(
                "d",
                "gateway",
                ready=0,
                conditions=[
                    k.V1DeploymentCondition(
                        type="Progressing",
                        status="False",
                        reason="ProgressDeadlineExceeded",
                        message="too slow",
                    )
                ],
            ),
            False,
            True,
            "rollout stuck",
        ),
    ],
)
def test_deployment_status(obj: k.V1Deployment, ready: bool, failed: bool, detail: str) -> None:
    status = k8s.deployment_status(obj)
    assert (status.ready, status.failed) == (ready, failed)
    assert detail in status.detail


def test_job_status() -> None:
    assert k8s.job_status(job(succeeded=1, conditions=[("Complete", None)])).ready
    running = k8s.job_status(job(active=1))
    assert not running.ready and not running.failed and "1 active" in running.detail
    failed = k8s.job_status(job(failed=2, conditions=[("Failed", "BackoffLimitExceeded")]))
    assert failed.failed and "BackoffLimitExceeded" in failed.detail


def test_pod_status() -> None:
    status = k8s.pod_status(pod("p"))
    assert status is not None and status.ready
    not_ready = k8s.pod_status(pod("p", component="retrieval", ready=False))
    assert not_ready is not None and not not_ready.ready and not not_ready.failed
    assert "not ready" in not_ready.detail
    never = k8s.pod_status(pod("p", phase="Pending", ready=False, waiting="ErrImageNeverPull"))
    assert never is not None and never.failed and "ErrImageNeverPull" in never.detail
    crash = k8s.pod_status(pod("p", ready=False, waiting="CrashLoopBackOff"))
    assert crash is not None and not crash.failed and "CrashLoopBackOff" in crash.detail
    # Finished trainer pods are not expected to be ready.
    assert k8s.pod_status(pod("t", "trainer", phase="Succeeded", ready=False, owner="Job")) is None


def test_evaluate_the_whole_release() -> None:
    pods = [pod(f"shop-recsys-{s}-1", s) for s in k8s.SERVICES]
    statuses = k8s.evaluate(all_deployments(), [job(succeeded=1)], pods)
    assert k8s.all_ready(statuses) and k8s.first_failure(statuses) is None
    missing = k8s.evaluate(all_deployments()[1:], [job(succeeded=1)], pods)
    assert not k8s.all_ready(missing)
    assert missing[0].name == "gateway" and "no Deployment" in missing[0].detail
    assert not k8s.all_ready([])
    assert all(s.line().startswith("ok") for s in statuses)


def test_pick_gateway_pod_and_port() -> None:
    pods = [pod("r", "ranking"), pod("g-unready", ready=False), pod("g")]
    chosen = k8s.pick_gateway_pod(pods)
    assert chosen.metadata.name == "g"
    assert k8s.grpc_port(chosen) == 50051
    with pytest.raises(k8s.SmokeError, match="no ready gateway pod"):
        k8s.pick_gateway_pod([pod("g", ready=False)])


def test_format_recommendation() -> None:
    from recsys.v1 import common_pb2, gateway_pb2

    response = gateway_pb2.RecommendResponse(
        items=[common_pb2.ScoredItem(item_id="318"), common_pb2.ScoredItem(item_id="50")],
        assignments=[gateway_pb2.ExperimentAssignment(experiment="candidates", arm="control")],
        degraded=True,
        degraded_reasons=["ranking: DEADLINE_EXCEEDED"],
        artifact_version="v1",
    )
    line = k8s.format_recommendation(response)
    assert line == "2 items [318 50] version v1 arms candidates=control DEGRADED (ranking: DEADLINE_EXCEEDED)"


class FakeCluster(k8s.Cluster):
    def __init__(self, looks: list[tuple[list[Any], list[Any], list[Any]]]) -> None:
        super().__init__(None, None, None)
        self.looks = looks

    def look(self, namespace: str, selector: str) -> tuple[list[Any], list[Any], list[Any]]:
        return self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]


def test_wait_ready_polls_until_ready_and_fails_fast_on_a_fatal_state() -> None:
    lines: list[str] = []
    pods = [pod(f"p-{s}", s) for s in k8s.SERVICES]
    cluster = FakeCluster(
        [(all_deployments(), [job(active=1)], pods), (all_deployments(), [job(succeeded=1)], pods)]
    )
    assert k8s.wait_ready(cluster, "recs", "x", timeout_s=10, say=lines.append, poll_s=0) == pods
    assert any("running" in line for line in lines) and any("complete" in line for line in lines)

    broken = FakeCluster([(all_deployments(), [job(conditions=[("Failed", "BackoffLimitExceeded")])], pods)])
    with pytest.raises(k8s.SmokeError, match="job/shop-recsys-trainer: failed: BackoffLimitExceeded"):
        k8s.wait_ready(broken, "recs", "x", timeout_s=10, say=lines.append, poll_s=0)
    empty = FakeCluster([([], [], [])])
    with pytest.raises(k8s.SmokeError, match="wrong --release or --namespace"):
        k8s.wait_ready(empty, "recs", "x", timeout_s=10, say=lines.append, poll_s=0)
    slow = FakeCluster([(all_deployments(), [job(active=1)], pods)])
    with pytest.raises(k8s.SmokeError, match=r"not ready after 0s: job/shop-recsys-trainer running"):
        k8s.wait_ready(slow, "recs", "x", timeout_s=0, say=lines.append, poll_s=0)


def test_the_command_is_wired_into_the_cli() -> None:
    args = build_parser().parse_args(["k8s", "smoke", "--release", "shop", "-n", "recs", "--timeout", "5"])
    assert (args.command, args.k8s_command, args.release, args.namespace, args.timeout) == (
        "k8s",
        "smoke",
        "shop",
        "recs",
        5.0,
    )


def test_without_a_kubeconfig_it_fails_with_one_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["k8s", "smoke", "--timeout", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recsys k8s smoke: no Kubernetes configuration")


class SecretCluster(FakeCluster):
    def __init__(self, secrets: dict[str, dict[str, str]], error: Exception | None = None) -> None:
        super().__init__([([], [], [])])
        self.secrets = secrets
        self.error = error

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        if self.error is not None:
            raise self.error
        return self.secrets[name].get(key)


def test_the_api_key_comes_from_the_environment_or_the_gateways_keys_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    open_gateway = pod("g")
    secured = pod("g")
    assert secured.spec is not None
    secured.spec.volumes = [
        k.V1Volume(name="tmp", empty_dir=k.V1EmptyDirVolumeSource()),
        k.V1Volume(
            name=k8s.KEYS_VOLUME, secret=k.V1SecretVolumeSource(secret_name="shop-recsys-gateway-auth")
        ),
    ]
    assert k8s.keys_secret(open_gateway) is None
    assert k8s.keys_secret(secured) == "shop-recsys-gateway-auth"

    monkeypatch.delenv("RECSYS_API_KEY", raising=False)
    lines: list[str] = []
    cluster = SecretCluster({"shop-recsys-gateway-auth": {k8s.SMOKE_KEY: "rsk_from_secret"}})
    assert k8s.smoke_api_key(cluster, "recs", open_gateway, lines.append) is None
    assert k8s.smoke_api_key(cluster, "recs", secured, lines.append) == "rsk_from_secret"
    assert lines == ["API key: smoke-key of Secret shop-recsys-gateway-auth"]  # never the key itself
    monkeypatch.setenv("RECSYS_API_KEY", "rsk_from_env")
    assert k8s.smoke_api_key(cluster, "recs", secured, lines.append) == "rsk_from_env"
    monkeypatch.delenv("RECSYS_API_KEY")

    with pytest.raises(k8s.SmokeError, match="Secret shop-recsys-gateway-auth has no smoke-key"):
        k8s.smoke_api_key(SecretCluster({"shop-recsys-gateway-auth": {}}), "recs", secured, lines.append)
    forbidden = k.ApiException(status=403, reason="Forbidden")
    with pytest.raises(
        k8s.SmokeError, match=r"\(403 Forbidden\): set RECSYS_API_KEY to a key with the recommend"
    ):
        k8s.smoke_api_key(SecretCluster({}, forbidden), "recs", secured, lines.append)


class TLSCluster(SecretCluster):
    def __init__(self, secrets: dict[str, dict[str, str]], services: dict[str, str]) -> None:
        super().__init__(secrets)
        self.services = services

    def service_name(self, namespace: str, selector: str) -> str | None:
        return self.services.get(selector)


def test_a_tls_gateway_is_called_with_the_ca_of_its_secret_and_its_services_name(tmp_path: Path) -> None:
    plain, secured = pod("g"), pod("g")
    assert secured.spec is not None
    secured.spec.volumes = [
        k.V1Volume(name=k8s.TLS_VOLUME, secret=k.V1SecretVolumeSource(secret_name="shop-recsys-gateway-tls"))
    ]
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    selector = k8s.release_selector("shop", "gateway")
    cluster = TLSCluster({"shop-recsys-gateway-tls": {k8s.CA_KEY: pem}}, {selector: "shop-recsys-gateway"})
    lines: list[str] = []
    assert k8s.smoke_tls(cluster, "recs", "shop", plain, tmp_path, lines.append) is None
    tls = k8s.smoke_tls(cluster, "recs", "shop", secured, tmp_path, lines.append)
    assert tls == ClientTLS(tmp_path / "ca.crt", server_name="shop-recsys-gateway")
    assert (tmp_path / "ca.crt").read_text() == pem + "\n"
    assert lines == ["TLS: the CA of Secret shop-recsys-gateway-tls, server name shop-recsys-gateway"]
    without_ca = TLSCluster({"shop-recsys-gateway-tls": {}}, {})
    with pytest.raises(k8s.SmokeError, match=r"Secret shop-recsys-gateway-tls has no ca\.crt: give --tls-ca"):
        k8s.smoke_tls(without_ca, "recs", "shop", secured, tmp_path, lines.append)
    # flags of your own win (a gateway behind a certificate from a public CA: --tls)
    args = build_parser().parse_args(["k8s", "smoke", "--tls", "--tls-server-name", "recs.example.com"])
    assert client_from_args(args) == ClientTLS(server_name="recs.example.com")
