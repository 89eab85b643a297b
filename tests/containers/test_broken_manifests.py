"""The tier fails when the chart's manifests stop matching what the image accepts: each case breaks one
thing of a rendered workload in a fixture (never in the chart) and expects the pod to fail, naming it."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import pytest

from tests.containers.conftest import tier_values
from tests.containers.pods import Node, Obj, PodFailed, Unsupported
from tests.helm.chart import objects, render

pytestmark = pytest.mark.timeout(1500)


def template(component: str) -> Obj:
    for obj in objects(render(tier_values())):
        labels = obj["metadata"].get("labels") or {}
        if obj["kind"] in ("Deployment", "Job") and labels.get("app.kubernetes.io/component") == component:
            return copy.deepcopy(obj["spec"]["template"])
    raise AssertionError(component)


def add_arg(t: Obj) -> None:
    t["spec"]["containers"][0]["args"].append("--no-such-flag")


def bad_env_value(t: Obj) -> None:
    t["spec"]["containers"][0]["env"].append({"name": "RECSYS_RELOAD_INTERVAL_S", "value": "soon"})


def write_outside_the_volumes(t: Obj) -> None:
    args = t["spec"]["containers"][0]["args"]
    args[args.index("--out") + 1] = "/app/artifacts"


def run_as_root(t: Obj) -> None:
    t["spec"]["securityContext"]["runAsUser"] = 0


CASES: dict[str, tuple[str, Callable[[Obj], None], str]] = {
    "unknown arg": ("ranking", add_arg, "unrecognized arguments: --no-such-flag"),
    "bad env value": ("features", bad_env_value, "RECSYS_RELOAD_INTERVAL_S"),
    "write to the read-only root": ("trainer", write_outside_the_volumes, "/app/artifacts"),
    "root user": ("gateway", run_as_root, "runAsNonRoot and the user is 0"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_broken_manifest_fails_the_pod_naming_what_is_wrong(node: Node, case: str) -> None:
    component, breaks, expected = CASES[case]
    broken = template(component)
    breaks(broken)
    with pytest.raises(PodFailed) as failure:
        pod = node.start(f"broken-{component}", broken)
        if component == "trainer":
            node.wait_completed(pod, timeout_s=120)
        else:
            node.wait_ready(pod)
    assert expected in str(failure.value)


def test_the_unbroken_manifest_starts(node: Node) -> None:
    """The control: the same workload unbroken gets past argument parsing (it waits for artifacts)."""
    pod = node.start("ranking", template("ranking"))
    deadline = time.monotonic() + 60
    while "listening" not in pod.logs() and time.monotonic() < deadline:
        assert pod.state()["Status"] == "running", pod.logs()
        time.sleep(0.25)
    assert "listening" in pod.logs()
    # Without artifacts a backend listens but is not ready: the probe the chart gives it says so.
    assert not node.probe(pod, pod.main["readinessProbe"])


@pytest.mark.parametrize(
    ("where", "key"), [("spec", "hostNetwork"), ("spec", "initContainers"), ("container", "lifecycle")]
)
def test_a_field_the_runner_does_not_implement_is_refused_not_ignored(
    node: Node, where: str, key: str
) -> None:
    pod = template("ranking")
    (pod["spec"] if where == "spec" else pod["spec"]["containers"][0])[key] = {}
    with pytest.raises(Unsupported, match=key):
        node.start("unsupported", pod)
