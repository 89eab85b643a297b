"""Pod specs of a rendered chart run as Docker containers, the way a kubelet would run them.

What is followed: `command`/`args` (with `$(VAR)` expansion), env (values, Secret, ConfigMap and field
refs), emptyDir / PVC / ConfigMap / Secret volumes (with `fsGroup` applied to new volumes, as the kubelet
does), the pod's and the container's security context (user and group, `runAsNonRoot` against the
image's user, read-only root, dropped capabilities, no privilege escalation), CPU and memory limits,
container ports, Service names as DNS names on one network, and exec / TCP / gRPC probes. What is not:
scheduling (requests, affinity, spread), NetworkPolicy, service accounts. Any other field of a pod or a
container is refused (`Unsupported`), so a chart change this file does not understand fails the tier
instead of being ignored.

A container that exits while it should be serving is a failure here, where Kubernetes would restart it:
in a test, a crash is the thing to report (with its log)."""

from __future__ import annotations

import base64
import re
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import grpc
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import EndpointConfig, Mount
from grpc_health.v1 import health_pb2, health_pb2_grpc

Obj = dict[str, Any]

#: Fields of a pod spec and of a container this runner honours, or may ignore because they only place
#: or account for a pod (scheduling, service accounts).
POD_FIELDS = {
    "containers",
    "volumes",
    "securityContext",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    # Placement and identity: nothing to do on one Docker engine.
    "serviceAccountName",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "imagePullSecrets",
    "topologySpreadConstraints",
    "affinity",
    "nodeSelector",
    "tolerations",
    "priorityClassName",
}
CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "resources",
    "securityContext",
    "volumeMounts",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
}
SECURITY_FIELDS = {
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "fsGroupChangePolicy",
    "seccompProfile",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
    "privileged",
}
#: How often a probe is tried while waiting: faster than the manifests' periods (a kubelet would wait the
#: whole period), which only shortens the wait; the total (failureThreshold x period) is the manifest's.
POLL_S = 0.25
#: The label on every Docker object a run makes, for clean-up.
RUN_LABEL = "io.recsys.container-test"


class Unsupported(AssertionError):
    """The manifest uses a field this runner does not implement."""


class PodFailed(AssertionError):
    """A pod did not do what its spec says: refused by the runtime, exited, or never turned ready."""


@dataclass
class Pod:
    name: str
    labels: dict[str, str]
    spec: Obj
    container: Container
    #: Docker volumes that live and die with the pod (its emptyDirs).
    owned_volumes: list[str] = field(default_factory=list)

    @property
    def main(self) -> Obj:
        container: Obj = self.spec["containers"][0]
        return container

    def ip(self, network: str) -> str:
        self.container.reload()
        address: str = self.container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        return address

    def host_port(self, port: int) -> int:
        """The loopback port Docker published `port` on."""
        self.container.reload()
        (binding,) = self.container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"]
        return int(binding["HostPort"])

    def state(self) -> Obj:
        self.container.reload()
        state: Obj = self.container.attrs["State"]
        return state

    def logs(self, tail: int = 40) -> str:
        return self.container.logs(tail=tail).decode(errors="replace")

    def failure(self, what: str) -> PodFailed:
        state = self.state()
        how = f"exit code {state['ExitCode']}" + (", OOMKilled" if state.get("OOMKilled") else "")
        if state["Status"] == "running":
            how = "still running"
        return PodFailed(f"pod {self.name}: {what} ({how}); last log lines:\n{self.logs()}")


def cpu_limit(text: str) -> int:
    """Kubernetes CPU quantity ("500m", "2", "1.5") -> Docker nano-CPUs."""
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return int(cores * 1e9)


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def memory_limit(text: str) -> int:
    """Kubernetes memory quantity ("768Mi", "3Gi", "256M") -> bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G|)", text)
    if match is None:
        raise Unsupported(f"memory quantity {text!r}")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, others left as they are, `$$` is `$`."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def check_fields(what: str, obj: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise Unsupported(f"{what}: fields the container runner does not implement: {unknown}")


class Node:
    """One Docker network standing in for a namespace of a cluster: its pods, Services (as DNS aliases),
    Secrets, ConfigMaps and PersistentVolumeClaims (as named volumes)."""

    def __init__(
        self,
        client: docker.DockerClient,
        objects: Iterable[Obj],
        *,
        namespace: str,
        cluster_domain: str,
        workdir: Path,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.cluster_domain = cluster_domain
        self.workdir = workdir
        self.run_id = secrets.token_hex(3)
        objs = list(objects)
        self.services = [o for o in objs if o["kind"] == "Service"]
        self.secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
        self.config_maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
        self.claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
        self.network_name = f"recsys-{self.run_id}"
        self.network: Network = client.networks.create(
            self.network_name, driver="bridge", labels={RUN_LABEL: self.run_id}
        )
        self.pods: list[Pod] = []
        self._volumes: set[str] = set()

    # -- names -----------------------------------------------------------------------------------------

    def dns_names(self, labels: Mapping[str, str]) -> list[str]:
        """The names the pod answers to: every Service whose selector its labels match, short and long."""
        names: list[str] = []
        for service in self.services:
            selector = service["spec"].get("selector") or {}
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                name = service["metadata"]["name"]
                ns = self.namespace
                names += [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{self.cluster_domain}"]
        return names

    def volume_name(self, kind: str, name: str) -> str:
        return f"recsys-{self.run_id}-{kind}-{name}"

    # -- env -------------------------------------------------------------------------------------------

    def secret_value(self, name: str, key: str) -> str | None:
        secret = self.secrets.get(name)
        if secret is None:
            return None
        if key in (secret.get("stringData") or {}):
            return str(secret["stringData"][key])
        if key in (secret.get("data") or {}):
            return base64.b64decode(secret["data"][key]).decode()
        return None

    def config_map_value(self, name: str, key: str) -> str | None:
        data = (self.config_maps.get(name) or {}).get("data") or {}
        return None if key not in data else str(data[key])

    def environment(self, pod_name: str, container: Obj) -> dict[str, str]:
        if "envFrom" in container:
            raise Unsupported("envFrom")
        env: dict[str, str] = {}
        for entry in container.get("env", []):
            name = entry["name"]
            if "valueFrom" not in entry:
                env[name] = expand(str(entry.get("value", "")), env)
                continue
            source = entry["valueFrom"]
            value: str | None
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                fields = {"metadata.name": pod_name, "metadata.namespace": self.namespace}
                if path not in fields:
                    raise Unsupported(f"env {name}: fieldRef {path}")
                value = fields[path]
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                kind = "secretKeyRef" if "secretKeyRef" in source else "configMapKeyRef"
                ref = source[kind]
                lookup = self.secret_value if kind == "secretKeyRef" else self.config_map_value
                value = lookup(ref["name"], ref["key"])
                if value is None and not ref.get("optional", False):
                    raise PodFailed(
                        f"pod {pod_name}: CreateContainerConfigError: env {name}: {kind} "
                        f"{ref['name']}/{ref['key']} not found"
                    )
            else:
                raise Unsupported(f"env {name}: valueFrom {sorted(source)}")
            if value is not None:
                env[name] = value
        return env

    # -- volumes ---------------------------------------------------------------------------------------

    def _files_dir(self, pod_name: str, volume: Obj) -> Path:
        """A ConfigMap or Secret volume: its keys as files in a host directory, bind-mounted read-only."""
        if "configMap" in volume:
            source, data = (
                volume["configMap"],
                (self.config_maps.get(volume["configMap"]["name"]) or {}).get("data"),
            )
        else:
            source = volume["secret"]
            secret = self.secrets.get(source["secretName"]) or {}
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            data.update(secret.get("stringData") or {})
        if data is None:
            raise PodFailed(f"pod {pod_name}: volume {volume['name']}: {source} not found")
        directory = self.workdir / f"{pod_name}-{volume['name']}"
        directory.mkdir(parents=True)
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            path = directory / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]])
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)))
        directory.chmod(0o755)
        return directory

    def mounts(
        self, pod_name: str, spec: Obj, claims: Mapping[str, str]
    ) -> tuple[list[Mount], dict[str, str], list[str]]:
        """Docker mounts of the pod's container, the new volumes among them (mount path -> volume kind;
        "files" for a ConfigMap's or Secret's directory) and the volumes that live and die with the pod
        (its emptyDirs)."""
        by_name = {v["name"]: v for v in spec.get("volumes", [])}
        out: list[Mount] = []
        new: dict[str, str] = {}
        owned: list[str] = []
        for mount in spec["containers"][0].get("volumeMounts", []):
            if "subPath" in mount or "mountPropagation" in mount:
                raise Unsupported(f"volumeMount {mount['name']}: subPath/mountPropagation")
            volume = by_name.get(mount["name"])
            target, read_only = mount["mountPath"], bool(mount.get("readOnly", False))
            if volume is None:
                if mount["name"] not in claims:
                    raise PodFailed(f"pod {pod_name}: volumeMount {mount['name']} names no volume")
                source, kind = claims[mount["name"]], "pvc"
            elif "emptyDir" in volume:
                if volume["emptyDir"].get("medium") == "Memory":
                    size = volume["emptyDir"].get("sizeLimit")
                    out.append(
                        Mount(target, None, type="tmpfs", tmpfs_size=memory_limit(size) if size else None)
                    )
                    continue
                source, kind = self.volume_name("emptydir", f"{pod_name}-{volume['name']}"), "emptyDir"
                owned.append(source)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.claims:
                    raise PodFailed(f"pod {pod_name}: PersistentVolumeClaim {claim} is not in the release")
                source, kind = self.volume_name("pvc", claim), "pvc"
                read_only = read_only or bool(volume["persistentVolumeClaim"].get("readOnly", False))
            elif "configMap" in volume or "secret" in volume:
                out.append(Mount(target, str(self._files_dir(pod_name, volume)), type="bind", read_only=True))
                new[target] = "files"
                continue
            else:
                raise Unsupported(f"volume {volume['name']}: {sorted(volume)}")
            if source not in self._volumes:
                # Kubernetes volumes start empty: no copy of the image's directory (Docker's default).
                self.client.volumes.create(source, labels={RUN_LABEL: self.run_id})
                self._volumes.add(source)
                new[target] = kind
            out.append(Mount(target, source, type="volume", read_only=read_only, no_copy=True))
        return out, new, owned

    def prepare_volumes(
        self, image: str, mounts: list[Mount], new: Mapping[str, str], fs_group: int | None
    ) -> None:
        """What the kubelet does to a new volume: an emptyDir is created world-writable (0777); with an
        fsGroup, every new volume is group-owned by it, group-writable, its directories setgid, and a
        ConfigMap's or Secret's files (read-only) group-owned by it and readable by their user and group
        (so a Secret file with defaultMode 0440 is the pod's to read, and nobody else's)."""
        script = []
        for target, kind in new.items():
            if kind == "emptyDir":
                script.append(f"chmod 0777 {target}")
            if fs_group is not None and kind == "files":
                script.append(f"chgrp -R {fs_group} {target} && chmod -R ug+rX {target}")
            elif fs_group is not None:
                script.append(
                    f"chgrp -R {fs_group} {target} && chmod -R g+rwX {target}"
                    f" && find {target} -type d -exec chmod g+s {{}} +"
                )
        if not script:
            return
        writable = [
            Mount(m["Target"], m["Source"], type="bind")
            if new[m["Target"]] == "files"
            else Mount(m["Target"], m["Source"], type="volume", no_copy=True)
            for m in mounts
            if m["Target"] in new
        ]
        self.client.containers.run(
            image,
            entrypoint=["/bin/sh", "-c", " && ".join(script)],
            command=[],
            user="0:0",
            mounts=writable,
            network_mode="none",
            labels={RUN_LABEL: self.run_id},
            remove=True,
        )

    # -- pods ------------------------------------------------------------------------------------------

    def start(
        self,
        name: str,
        template: Obj,
        *,
        claims: Mapping[str, str] | None = None,
        publish: Iterable[int] = (),
    ) -> Pod:
        """Create and start the pod `name` from a pod template ({metadata, spec}); `claims` maps the
        volume names of a StatefulSet's volumeClaimTemplates to their volumes; `publish` ports go to
        ephemeral loopback ports of the host."""
        spec: Obj = template["spec"]
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        check_fields(f"pod {name}", spec, POD_FIELDS)
        if "initContainers" in spec or len(spec["containers"]) != 1:
            raise Unsupported(f"pod {name}: exactly one container and no init containers")
        container = spec["containers"][0]
        check_fields(f"pod {name} container {container['name']}", container, CONTAINER_FIELDS)
        pod_security: Obj = spec.get("securityContext") or {}
        security: Obj = {**pod_security, **(container.get("securityContext") or {})}
        check_fields(f"pod {name} securityContext", security, SECURITY_FIELDS)
        if security.get("privileged"):
            raise Unsupported(f"pod {name}: privileged")
        image = container["image"]
        if container.get("imagePullPolicy") == "Always":
            raise Unsupported(f"pod {name}: imagePullPolicy Always (no registry here)")

        user = self._user(name, image, security)
        env = self.environment(name, container)
        args = [expand(str(a), env) for a in container.get("args", [])]
        command = [expand(str(c), env) for c in container["command"]] if "command" in container else None
        limits = (container.get("resources") or {}).get("limits") or {}
        memory = memory_limit(str(limits["memory"])) if "memory" in limits else None
        capabilities = security.get("capabilities") or {}
        security_opt = []
        if security.get("allowPrivilegeEscalation") is False:
            security_opt.append("no-new-privileges")
        seccomp = (security.get("seccompProfile") or {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            security_opt.append("seccomp=unconfined")
        elif seccomp != "RuntimeDefault":
            raise Unsupported(f"pod {name}: seccompProfile {seccomp}")
        fs_group = pod_security.get("fsGroup")

        mounts, new_volumes, owned = self.mounts(name, spec, claims or {})
        self.prepare_volumes(image, mounts, new_volumes, None if fs_group is None else int(fs_group))
        # Port 0: an ephemeral host port, on loopback only.
        ports = {f"{p}/tcp": ("127.0.0.1", 0) for p in publish}
        docker_container = self.client.containers.create(
            image,
            command=args or None,
            entrypoint=command,
            environment=env,
            user=user,
            group_add=[str(fs_group)] if fs_group is not None else None,
            read_only=bool(security.get("readOnlyRootFilesystem", False)),
            cap_drop=list(capabilities.get("drop", [])) or None,
            cap_add=list(capabilities.get("add", [])) or None,
            security_opt=security_opt or None,
            nano_cpus=cpu_limit(str(limits["cpu"])) if "cpu" in limits else None,
            mem_limit=memory,
            memswap_limit=memory,
            mounts=mounts,
            ports=ports or None,
            hostname=name[:63],
            name=f"recsys-{self.run_id}-{name}",
            labels={RUN_LABEL: self.run_id, **labels},
            network=self.network_name,
            networking_config={
                self.network_name: EndpointConfig(self.client.api.api_version, aliases=self.dns_names(labels))
            },
        )
        pod = Pod(name, labels, spec, docker_container, owned)
        docker_container.start()
        self.pods.append(pod)
        return pod

    def _user(self, pod_name: str, image: str, security: Obj) -> str | None:
        """The container's user: the manifest's runAsUser/runAsGroup, else the image's; `runAsNonRoot`
        refuses root (and a non-numeric image user, which the kubelet cannot check)."""
        uid, gid = security.get("runAsUser"), security.get("runAsGroup")
        image_user = str(self.client.images.get(image).attrs["Config"].get("User") or "0")
        effective = str(uid) if uid is not None else image_user.split(":")[0]
        if security.get("runAsNonRoot"):
            if not effective.isdigit():
                raise PodFailed(
                    f"pod {pod_name}: CreateContainerConfigError: image {image} has non-numeric user "
                    f"{effective!r} and runAsNonRoot (cannot verify the user is non-root)"
                )
            if int(effective) == 0:
                raise PodFailed(f"pod {pod_name}: CreateContainerConfigError: runAsNonRoot and the user is 0")
        if uid is None and gid is None:
            return None
        return f"{effective}:{gid}" if gid is not None else effective

    # -- probes ----------------------------------------------------------------------------------------

    def _port(self, pod: Pod, port: int | str) -> int:
        if isinstance(port, int):
            return port
        for declared in pod.main.get("ports", []):
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise PodFailed(f"pod {pod.name}: probe port {port!r} is not a declared container port")

    def probe(self, pod: Pod, probe: Obj) -> bool:
        """One try of a probe, from outside the container (as the kubelet does), or exec inside it."""
        timeout = float(probe.get("timeoutSeconds", 1))
        if "grpc" in probe:
            target = f"{pod.ip(self.network_name)}:{self._port(pod, probe['grpc']['port'])}"
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                        timeout=timeout,
                    )
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        if "tcpSocket" in probe:
            address = (pod.ip(self.network_name), self._port(pod, probe["tcpSocket"]["port"]))
            try:
                socket.create_connection(address, timeout=timeout).close()
            except OSError:
                return False
            return True
        if "exec" in probe:
            result = pod.container.exec_run(probe["exec"]["command"])
            return result.exit_code == 0
        raise Unsupported(f"pod {pod.name}: probe {sorted(probe)}")

    def _wait_probe(self, pod: Pod, kind: str) -> None:
        probe: Obj | None = pod.main.get(kind)
        if probe is None:
            return
        budget = float(probe.get("initialDelaySeconds", 0)) + float(probe.get("periodSeconds", 10)) * float(
            probe.get("failureThreshold", 3)
        )
        deadline = time.monotonic() + budget
        while True:
            if pod.state()["Status"] != "running":
                raise pod.failure(f"exited before its {kind} passed")
            if self.probe(pod, probe):
                return
            if time.monotonic() > deadline:
                raise pod.failure(f"{kind} did not pass within {budget:g} s")
            time.sleep(POLL_S)

    def wait_ready(self, pod: Pod) -> None:
        """Startup probe until it passes, then the readiness probe (each within the manifest's budget)."""
        self._wait_probe(pod, "startupProbe")
        self._wait_probe(pod, "readinessProbe")

    def alive(self, pod: Pod) -> bool:
        probe = pod.main.get("livenessProbe")
        return pod.state()["Status"] == "running" and (probe is None or self.probe(pod, probe))

    def wait_completed(self, pod: Pod, timeout_s: float) -> None:
        """A run-to-completion pod (Job, test hook): exit 0 within the time, else PodFailed with its log."""
        try:
            status = pod.container.wait(timeout=timeout_s)
        except Exception as e:  # the engine's read timeout (requests' ConnectionError/ReadTimeout)
            raise pod.failure(f"did not complete within {timeout_s:g} s") from e
        if status["StatusCode"] != 0:
            raise pod.failure("failed")

    def delete(self, pod: Pod) -> int:
        """SIGTERM, then SIGKILL after the pod's grace period (as `kubectl delete pod`); the exit code."""
        grace = int(pod.spec.get("terminationGracePeriodSeconds", 30))
        pod.container.stop(timeout=grace)
        code = int(pod.state()["ExitCode"])
        self._remove(pod)
        return code

    def _remove(self, pod: Pod) -> None:
        pod.container.remove(force=True)
        for volume in pod.owned_volumes:
            self.client.volumes.get(volume).remove(force=True)
            self._volumes.discard(volume)
        self.pods.remove(pod)

    def close(self) -> None:
        """Remove every container, volume and the network this node made."""
        for c in self.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"}):
            c.remove(force=True)
        for v in self.client.volumes.list(filters={"label": f"{RUN_LABEL}={self.run_id}"}):
            v.remove(force=True)
        self.network.remove()
        self.pods.clear()


def remove_leftovers(client: docker.DockerClient) -> None:
    """Containers, volumes and networks an earlier run left behind (killed before its clean-up)."""
    for c in client.containers.list(all=True, filters={"label": RUN_LABEL}):
        c.remove(force=True)
    for v in client.volumes.list(filters={"label": RUN_LABEL}):
        v.remove(force=True)
    for n in client.networks.list(filters={"label": RUN_LABEL}):
        n.remove()
