"""`recsys k8s smoke`: is a Helm release of the chart (deploy/helm/recsys) up and answering?

Waits for the release's Deployments and its trainer Job, checks that every pod is ready, port-forwards to
a gateway pod through the Kubernetes API (no `kubectl` needed) and sends one Recommend with the Python
client. Its API key: RECSYS_API_KEY when set, else the `smoke-key` (recommend role only) of the Secret the
gateway pod mounts its keys file from (reading it needs `get` on that Secret). A gateway serving TLS (the
chart's tls.enabled) is called over TLS: trusting the `ca.crt` of the Secret its certificate is mounted from
and expecting its Service's name in the certificate, unless the --tls-* flags say otherwise. Prints one
line per check; a failure ends with one line naming what is wrong and exit code 1.

The decisions (is this Deployment / Job / Pod ready? which objects belong to the release?) are pure
functions of `kubernetes.client` model objects, tested without a cluster; only `smoke` talks to one.
Needs the `kubernetes` package: `pip install 'recsys[k8s]'`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import select
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import ConfigError
from services.common.tls import ClientTLS, add_client_arguments, client_from_args

#: The chart's labels (deploy/helm/recsys/templates/_helpers.tpl).
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL = "app.kubernetes.io/name"
SERVICES = ("gateway", "features", "retrieval", "ranking")
#: The gateway pod's volume holding the keys file, and the key of its Secret holding a plain API key with
#: the recommend role for `helm test` and smoke (deploy/helm/recsys/templates/gateway-auth-secret.yaml).
KEYS_VOLUME = "api-keys"
SMOKE_KEY = "smoke-key"
#: The service pods' volume holding their certificate (templates/components.yaml) and the CA's key in it.
TLS_VOLUME = "tls"
CA_KEY = "ca.crt"
#: Container states that will not fix themselves: fail at once instead of waiting for the timeout.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


class SmokeError(RuntimeError):
    """The release is not healthy; the message is the one line the command prints."""


@dataclass(frozen=True)
class Status:
    """One object's verdict: `ready`, or why not; `failed` means waiting longer will not help."""

    kind: str
    name: str
    ready: bool
    detail: str
    failed: bool = False

    def line(self) -> str:
        mark = "ok" if self.ready else ("FAILED" if self.failed else "waiting")
        return f"{mark:<8} {self.kind}/{self.name}: {self.detail}"


# --- pure functions over kubernetes.client models ------------------------------------------------------


def release_selector(release: str, component: str | None = None, chart: str | None = None) -> str:
    """The label selector of a release's objects (optionally one component's)."""
    parts = [f"{INSTANCE_LABEL}={release}"]
    if chart:
        parts.append(f"{NAME_LABEL}={chart}")
    if component:
        parts.append(f"{COMPONENT_LABEL}={component}")
    return ",".join(parts)


def matches(selector: str, labels: dict[str, str] | None) -> bool:
    """Whether `labels` satisfy an equality-based selector like release_selector's."""
    labels = labels or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _conditions(obj: Any) -> dict[str, Any]:
    return {c.type: c for c in (getattr(obj.status, "conditions", None) or [])}


def deployment_status(deployment: Any) -> Status:
    """Ready when the controller has seen the latest spec and every desired replica is updated and ready."""
    name = deployment.metadata.name
    spec_replicas = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    status = deployment.status
    generation = deployment.metadata.generation or 0
    observed = status.observed_generation or 0
    updated = status.updated_replicas or 0
    ready = status.ready_replicas or 0
    available = status.available_replicas or 0
    total = status.replicas or 0
    progressing = _conditions(deployment).get("Progressing")
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        return Status("deployment", name, False, f"rollout stuck: {progressing.message}", failed=True)
    if observed < generation:
        return Status("deployment", name, False, "controller has not seen the latest spec yet")
    detail = f"{ready}/{spec_replicas} ready, {updated} updated, {available} available"
    if updated < spec_replicas or ready < spec_replicas or available < spec_replicas:
        return Status("deployment", name, False, detail)
    if total > updated:
        return Status("deployment", name, False, f"{detail}, {total - updated} old replicas terminating")
    return Status("deployment", name, True, detail)


def job_status(job: Any) -> Status:
    """Ready when the Job completed; failed when it reached its backoff limit or deadline."""
    name = job.metadata.name
    conditions = _conditions(job)
    failed = conditions.get("Failed")
    if failed is not None and failed.status == "True":
        return Status("job", name, False, f"failed: {failed.reason}: {failed.message}", failed=True)
    complete = conditions.get("Complete")
    succeeded = job.status.succeeded or 0
    if (complete is not None and complete.status == "True") or succeeded > 0:
        return Status("job", name, True, "complete")
    return Status(
        "job", name, False, f"running ({job.status.active or 0} active, {job.status.failed or 0} failed)"
    )


def _owner_kinds(pod: Any) -> set[str]:
    return {ref.kind for ref in (pod.metadata.owner_references or [])}


def pod_status(pod: Any) -> Status | None:
    """A pod's readiness; None for pods that are done by design (finished Job pods, `helm test` pods)."""
    name = pod.metadata.name
    phase = pod.status.phase
    annotations = pod.metadata.annotations or {}
    if phase in ("Succeeded", "Failed") and ("Job" in _owner_kinds(pod) or "helm.sh/hook" in annotations):
        return None
    statuses = list(pod.status.container_statuses or []) + list(pod.status.init_container_statuses or [])
    for cs in statuses:
        waiting = cs.state.waiting if cs.state is not None else None
        if waiting is not None and waiting.reason in FATAL_WAITING_REASONS:
            return Status("pod", name, False, f"{cs.name}: {waiting.reason}: {waiting.message}", failed=True)
    if phase == "Failed":
        return Status(
            "pod", name, False, f"failed: {pod.status.reason or ''} {pod.status.message or ''}".strip(), True
        )
    ready = _conditions(pod).get("Ready")
    if phase == "Running" and ready is not None and ready.status == "True":
        return Status("pod", name, True, "ready")
    reasons = []
    for cs in statuses:
        waiting = cs.state.waiting if cs.state is not None else None
        if waiting is not None and waiting.reason:
            reasons.append(f"{cs.name} {waiting.reason}")
        elif not cs.ready:
            reasons.append(f"{cs.name} not ready ({cs.restart_count} restarts)")
    return Status("pod", name, False, f"{phase}" + (f": {', '.join(reasons)}" if reasons else ""))


def missing_components(deployments: Iterable[Any]) -> list[str]:
    """The services of the chart that have no Deployment among `deployments`."""
    present = {(d.metadata.labels or {}).get(COMPONENT_LABEL) for d in deployments}
    return [s for s in SERVICES if s not in present]


def evaluate(deployments: Sequence[Any], jobs: Sequence[Any], pods: Sequence[Any]) -> list[Status]:
    """Every verdict for one look at the release (missing services first)."""
    out = [
        Status("deployment", name, False, "no Deployment with this component label in the release")
        for name in missing_components(deployments)
    ]
    out += [deployment_status(d) for d in sorted(deployments, key=lambda d: d.metadata.name)]
    out += [job_status(j) for j in sorted(jobs, key=lambda j: j.metadata.name)]
    out += [s for p in sorted(pods, key=lambda p: p.metadata.name) if (s := pod_status(p)) is not None]
    return out


def first_failure(statuses: Iterable[Status]) -> Status | None:
    return next((s for s in statuses if s.failed), None)


def all_ready(statuses: Sequence[Status]) -> bool:
    return bool(statuses) and all(s.ready for s in statuses)


def pick_gateway_pod(pods: Iterable[Any]) -> Any:
    """A ready gateway pod to port-forward to (the oldest, for stable output)."""
    ready = [
        p
        for p in pods
        if (p.metadata.labels or {}).get(COMPONENT_LABEL) == "gateway"
        and (status := pod_status(p)) is not None
        and status.ready
        and p.metadata.deletion_timestamp is None
    ]
    if not ready:
        raise SmokeError("no ready gateway pod")
    return sorted(
        ready, key=lambda p: (p.metadata.creation_timestamp is None, p.metadata.creation_timestamp)
    )[0]


def grpc_port(pod: Any, name: str = "grpc") -> int:
    """The container port named `name` of the pod's first container that has one."""
    for container in pod.spec.containers:
        for port in container.ports or []:
            if port.name == name:
                return int(port.container_port)
    raise SmokeError(f"pod {pod.metadata.name} has no container port named {name!r}")


def volume_secret(pod: Any, volume_name: str) -> str | None:
    """The Secret behind the pod's volume `volume_name`; None without one."""
    for volume in pod.spec.volumes or []:
        if volume.name == volume_name and volume.secret is not None:
            return str(volume.secret.secret_name)
    return None


def keys_secret(pod: Any) -> str | None:
    """The Secret the gateway pod's keys file comes from; None when the gateway runs without keys."""
    return volume_secret(pod, KEYS_VOLUME)


def format_recommendation(response: Any) -> str:
    arms = ", ".join(f"{a.experiment}={a.arm}" for a in response.assignments) or "-"
    items = " ".join(i.item_id for i in response.items)
    degraded = f" DEGRADED ({', '.join(response.degraded_reasons)})" if response.degraded else ""
    return f"{len(response.items)} items [{items}] version {response.artifact_version or '-'} arms {arms}{degraded}"


# --- the cluster side ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The few API calls smoke needs (a seam for tests)."""

    core: Any
    apps: Any
    batch: Any

    @classmethod
    def connect(cls, context: str | None) -> Cluster:
        try:
            from kubernetes import client, config
        except ImportError as e:
            raise SmokeError("the kubernetes package is missing: pip install 'recsys[k8s]'") from e
        try:
            config.load_kube_config(context=context)  # type: ignore[no-untyped-call]
        except Exception as kube_error:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except Exception:
                raise SmokeError(f"no Kubernetes configuration: {kube_error}") from kube_error
        return cls(client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api())

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        data = self.core.read_namespaced_secret(name, namespace).data or {}
        return base64.b64decode(data[key]).decode().strip() if key in data else None

    def service_name(self, namespace: str, selector: str) -> str | None:
        services = self.core.list_namespaced_service(namespace, label_selector=selector).items
        return str(services[0].metadata.name) if services else None

    def look(self, namespace: str, selector: str) -> tuple[list[Any], list[Any], list[Any]]:
        deployments = self.apps.list_namespaced_deployment(namespace, label_selector=selector).items
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector).items
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return deployments, jobs, pods


def wait_ready(
    cluster: Cluster,
    namespace: str,
    selector: str,
    timeout_s: float,
    say: Callable[[str], None],
    poll_s: float = 3.0,
) -> list[Any]:
    """Poll until every Deployment, Job and pod of the release is ready; returns the pods."""
    deadline = time.monotonic() + timeout_s
    shown: dict[str, str] = {}
    while True:
        try:
            deployments, jobs, pods = cluster.look(namespace, selector)
        except Exception as e:
            raise SmokeError(
                f"cannot list the release's objects in namespace {namespace}: {_api_error(e)}"
            ) from e
        if not deployments and not jobs and not pods:
            raise SmokeError(
                f"nothing in namespace {namespace} matches {selector} (wrong --release or --namespace?)"
            )
        statuses = evaluate(deployments, jobs, pods)
        for s in statuses:
            key = f"{s.kind}/{s.name}"
            if shown.get(key) != s.line():
                shown[key] = s.line()
                say(s.line())
        if (failure := first_failure(statuses)) is not None:
            raise SmokeError(f"{failure.kind}/{failure.name}: {failure.detail}")
        if all_ready(statuses):
            return pods
        if time.monotonic() > deadline:
            waiting = [s for s in statuses if not s.ready]
            raise SmokeError(
                f"not ready after {timeout_s:.0f}s: "
                + "; ".join(f"{s.kind}/{s.name} {s.detail}" for s in waiting[:3])
                + (f" (+{len(waiting) - 3} more)" if len(waiting) > 3 else "")
            )
        time.sleep(poll_s)


def _api_error(e: Exception) -> str:
    reason = getattr(e, "reason", None)
    status = getattr(e, "status", None)
    return (
        f"{status} {reason}" if status and reason else str(e).splitlines()[0] if str(e) else type(e).__name__
    )


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [a, b]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 1.0)
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()


@contextlib.contextmanager
def port_forward(cluster: Cluster, namespace: str, pod: str, port: int) -> Iterator[int]:
    """A loopback port whose connections go to `pod`:`port` through the API server (like kubectl)."""
    from kubernetes.stream import portforward

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                forward = portforward(
                    cluster.core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
                )
                remote = forward.socket(port)
                remote.setblocking(True)
            except Exception:
                conn.close()
                continue
            threading.Thread(target=_pump, args=(conn, remote), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()


def smoke_api_key(cluster: Cluster, namespace: str, gateway: Any, say: Callable[[str], None]) -> str | None:
    """RECSYS_API_KEY, else the smoke key of the gateway's keys Secret (None: the gateway has no keys)."""
    from services.client import API_KEY_ENV, api_key_from_env

    if (key := api_key_from_env()) is not None:
        say(f"API key from {API_KEY_ENV}")
        return key
    secret = keys_secret(gateway)
    if secret is None:
        return None
    try:
        key = cluster.secret_value(namespace, secret, SMOKE_KEY)
    except Exception as e:
        raise SmokeError(
            f"cannot read Secret {secret} for its {SMOKE_KEY} ({_api_error(e)}): "
            f"set {API_KEY_ENV} to a key with the recommend role"
        ) from e
    if key is None:
        raise SmokeError(
            f"Secret {secret} has no {SMOKE_KEY}: add a key with the recommend role to it, "
            f"or set {API_KEY_ENV} to one"
        )
    say(f"API key: {SMOKE_KEY} of Secret {secret}")
    return key


def smoke_tls(
    cluster: Cluster,
    namespace: str,
    release: str,
    gateway: Any,
    workdir: Path,
    say: Callable[[str], None],
) -> ClientTLS | None:
    """TLS to a gateway that mounts a certificate (None: plaintext): the CA of its Secret, written into
    `workdir`, and the name of the gateway's Service (the name the chart's certificates carry)."""
    secret = volume_secret(gateway, TLS_VOLUME)
    if secret is None:
        return None
    try:
        ca = cluster.secret_value(namespace, secret, CA_KEY)
        service = cluster.service_name(namespace, release_selector(release, "gateway"))
    except Exception as e:
        raise SmokeError(
            f"cannot read Secret {secret} or the gateway's Service ({_api_error(e)}): give --tls-ca"
        ) from e
    if ca is None:
        raise SmokeError(
            f"Secret {secret} has no {CA_KEY}: give --tls-ca with the CA of the gateway's certificate"
        )
    path = workdir / CA_KEY
    path.write_text(ca + "\n")
    say(f"TLS: the CA of Secret {secret}, server name {service}")
    return ClientTLS(path, server_name=service)


def smoke(
    release: str,
    namespace: str,
    *,
    timeout_s: float = 600.0,
    user: str = "1",
    k: int = 10,
    context: str | None = None,
    allow_degraded: bool = False,
    tls: ClientTLS | None = None,
    cluster: Cluster | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Raise SmokeError unless the release is ready and the gateway answers a Recommend (over `tls` when
    given, else over the TLS the gateway pod mounts, if any)."""
    import grpc

    from services.client import Client

    cluster = cluster or Cluster.connect(context)
    selector = release_selector(release)
    pods = wait_ready(cluster, namespace, selector, timeout_s, say)
    gateway = pick_gateway_pod(pods)
    port = grpc_port(gateway)
    api_key = smoke_api_key(cluster, namespace, gateway, say)
    with (
        tempfile.TemporaryDirectory() as workdir,
        port_forward(cluster, namespace, gateway.metadata.name, port) as local_port,
    ):
        tls = tls or smoke_tls(cluster, namespace, release, gateway, Path(workdir), say)
        say(f"port-forward 127.0.0.1:{local_port} -> pod/{gateway.metadata.name}:{port}")
        try:
            client = Client(f"127.0.0.1:{local_port}", timeout_s=10.0, api_key=api_key, tls=tls)
        except ConfigError as e:
            raise SmokeError(str(e)) from e
        with client:
            try:
                response = client.recommend(user, k=k)
            except grpc.RpcError as e:
                raise SmokeError(
                    f"Recommend via pod/{gateway.metadata.name}: {e.code().name}: {e.details()}"
                ) from e
    say(f"Recommend user {user}: {format_recommendation(response)}")
    if not response.items:
        raise SmokeError(f"Recommend user {user}: no items")
    if response.degraded and not allow_degraded:
        raise SmokeError(f"Recommend user {user}: degraded ({', '.join(response.degraded_reasons)})")


# --- the command ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`recsys k8s smoke ...` (the `k8s` parser is created by services/cli.py)."""
    commands = parser.add_subparsers(dest="k8s_command", required=True)
    run = commands.add_parser("smoke", help="wait for a Helm release to be ready and send one Recommend")
    run.add_argument("--release", default="recsys", help="Helm release name (default: recsys)")
    run.add_argument("--namespace", "-n", default="recsys", help="namespace (default: recsys)")
    run.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    run.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for readiness (default: 600)"
    )
    run.add_argument("--user", default="1", help="user id of the Recommend (default: 1)")
    run.add_argument("-k", type=int, default=10, help="items to ask for (default: 10)")
    run.add_argument("--allow-degraded", action="store_true", help="accept a degraded (fallback) answer")
    add_client_arguments(run, "the gateway (default: the TLS its pod mounts, if any)")


def main(args: argparse.Namespace) -> int:
    try:
        smoke(
            args.release,
            args.namespace,
            timeout_s=args.timeout,
            user=args.user,
            k=args.k,
            context=args.context,
            allow_degraded=args.allow_degraded,
            tls=client_from_args(args),
        )
    except SmokeError as e:
        print(f"recsys k8s smoke: {e}", file=sys.stderr)
        return 1
    print(f"recsys k8s smoke: release {args.release} in {args.namespace} is serving")
    return 0
