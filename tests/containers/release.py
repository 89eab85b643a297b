"""A rendered chart installed on a `Node` in the order `helm install` and `helm test` give it:
StatefulSets (Redis) ready, the post-install hook Jobs (the trainer) completed, the Deployments' pods
ready; then the test hook pods. An upgrade runs the pre-upgrade hooks and rolls a Deployment's pods by its
strategy (maxSurge / maxUnavailable), each new pod ready before an old one is deleted."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from tests.containers.pods import Node, Obj, Pod

COMPONENT = "app.kubernetes.io/component"
#: Longest a hook pod may run here (its Job's activeDeadlineSeconds when shorter).
HOOK_TIMEOUT_S = 600.0


def hooks_of(obj: Obj) -> set[str]:
    annotations = obj["metadata"].get("annotations") or {}
    return {h.strip() for h in str(annotations.get("helm.sh/hook", "")).split(",") if h.strip()}


class Release:
    def __init__(
        self, node: Node, objects: Iterable[Obj], *, publish: Mapping[str, Iterable[int]] = {}
    ) -> None:
        """`publish`: component -> container ports to publish on the host's loopback."""
        self.node = node
        self.objects = list(objects)
        self.publish = {k: list(v) for k, v in publish.items()}
        self.pods: dict[str, list[Pod]] = {}

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind and not hooks_of(o)]

    def hooks(self, hook: str) -> list[Obj]:
        found = [o for o in self.objects if hook in hooks_of(o)]
        return sorted(
            found, key=lambda o: int((o["metadata"].get("annotations") or {}).get("helm.sh/hook-weight", 0))
        )

    def replicas(self, deployment: Obj) -> int:
        """spec.replicas, else what its HorizontalPodAutoscaler starts from (minReplicas), else 1."""
        if "replicas" in deployment["spec"]:
            return int(deployment["spec"]["replicas"])
        for hpa in self.of_kind("HorizontalPodAutoscaler"):
            target = hpa["spec"]["scaleTargetRef"]
            if target["kind"] == "Deployment" and target["name"] == deployment["metadata"]["name"]:
                return int(hpa["spec"].get("minReplicas", 1))
        return 1

    def component(self, obj: Obj) -> str:
        return str(obj["spec"]["template"]["metadata"]["labels"].get(COMPONENT, ""))

    def _start(self, name: str, owner: Obj, claims: Mapping[str, str] | None = None) -> Pod:
        component = self.component(owner)
        pod = self.node.start(
            name, owner["spec"]["template"], claims=claims, publish=self.publish.get(component, ())
        )
        self.pods.setdefault(component, []).append(pod)
        return pod

    def install(self) -> None:
        for statefulset in self.of_kind("StatefulSet"):
            name = statefulset["metadata"]["name"]
            for i in range(int(statefulset["spec"].get("replicas", 1))):
                claims = {
                    t["metadata"]["name"]: self.node.volume_name("pvc", f"{t['metadata']['name']}-{name}-{i}")
                    for t in statefulset["spec"].get("volumeClaimTemplates", [])
                }
                self.node.wait_ready(self._start(f"{name}-{i}", statefulset, claims))
        self.run_hooks("post-install")
        started = [
            self._start(f"{d['metadata']['name']}-{secrets.token_hex(4)}", d)
            for d in self.of_kind("Deployment")
            for _ in range(self.replicas(d))
        ]
        for pod in started:
            self.node.wait_ready(pod)

    def run_hooks(self, hook: str) -> None:
        """The hook's Jobs and Pods, one after the other by weight, each to completion."""
        for obj in self.hooks(hook):
            if obj["kind"] == "Job":
                timeout = min(HOOK_TIMEOUT_S, float(obj["spec"].get("activeDeadlineSeconds", HOOK_TIMEOUT_S)))
                pod = self.node.start(
                    f"{obj['metadata']['name']}-{secrets.token_hex(3)}", obj["spec"]["template"]
                )
            elif obj["kind"] == "Pod":
                timeout = HOOK_TIMEOUT_S
                pod = self.node.start(
                    obj["metadata"]["name"], {"metadata": obj["metadata"], "spec": obj["spec"]}
                )
            else:
                continue
            try:
                self.node.wait_completed(pod, timeout)
            finally:
                self.node.delete(pod)

    def deployment(self, component: str) -> Obj:
        (found,) = [d for d in self.of_kind("Deployment") if self.component(d) == component]
        return found

    def roll(self, component: str) -> list[int]:
        """Replace every pod of the component's Deployment by a new one, as its RollingUpdate strategy
        allows; returns the exit codes of the old pods (0: they shut down gracefully)."""
        deployment = self.deployment(component)
        strategy = deployment["spec"].get("strategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            raise AssertionError(f"{component}: strategy {strategy.get('type')} is not a rolling update")
        rolling = strategy.get("rollingUpdate") or {}
        surge, unavailable = int(rolling.get("maxSurge", 1)), int(rolling.get("maxUnavailable", 0))
        if surge < 1:
            raise AssertionError(f"{component}: maxSurge {surge}: this runner rolls by surging")
        old = list(self.pods[component])
        codes: list[int] = []
        while old:
            # maxUnavailable > 0 would allow deleting before the new pod is ready; surging first is
            # always within the strategy and is what a zero-downtime rollout needs.
            batch, old = old[: max(surge, unavailable)], old[max(surge, unavailable) :]
            new = [
                self._start(f"{deployment['metadata']['name']}-{secrets.token_hex(4)}", deployment)
                for _ in batch
            ]
            for pod in new:
                self.node.wait_ready(pod)
            for pod in batch:
                self.pods[component].remove(pod)
                codes.append(self.node.delete(pod))
        return codes
