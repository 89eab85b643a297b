"""The chart's workloads as containers: installed in helm's order from the rendered manifests, the
chart's own test pod, a Recommend from the host, the security context in force, and an upgrade (a new
version trained by the pre-upgrade hook, one backend rolled) without a failed request."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest

from services.client import Client
from tests.containers.conftest import GATEWAY_PORT
from tests.containers.release import Release

pytestmark = pytest.mark.timeout(1500)

SERVICES = ("features", "retrieval", "ranking", "gateway")


def gateway_addresses(release: Release) -> list[str]:
    return [f"127.0.0.1:{pod.host_port(GATEWAY_PORT)}" for pod in release.pods["gateway"]]


def smoke_key(release: Release) -> str:
    """The recommend-only key the chart generates for its test pod (authentication is on by default)."""
    keys = {release.node.secret_value(name, "smoke-key") for name in release.node.secrets} - {None}
    (key,) = keys
    assert key is not None
    return key


def test_the_charts_test_pod_passes(release: Release) -> None:
    release.run_hooks("test")


def test_recommend_from_the_host_through_a_published_port(release: Release) -> None:
    for address in gateway_addresses(release):
        with Client(address, timeout_s=10) as client:
            with pytest.raises(grpc.RpcError) as refused:
                client.recommend("1", k=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(address, timeout_s=10, api_key=smoke_key(release)) as client:
            reply = client.recommend("1", k=10)
        assert len(reply.items) == 10
        assert len({item.item_id for item in reply.items}) == 10
        assert reply.artifact_version


@pytest.mark.parametrize("component", SERVICES)
def test_every_container_runs_as_the_manifest_says(release: Release, component: str) -> None:
    for pod in release.pods[component]:
        config = pod.container.attrs["Config"]
        host = pod.container.attrs["HostConfig"]
        assert config["User"] == "10001:10001"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] > 0 and host["NanoCpus"] > 0
        # The root filesystem refuses a write; the chart's /tmp emptyDir takes it.
        assert pod.container.exec_run(["/bin/sh", "-c", "touch /app/x"]).exit_code != 0
        assert pod.container.exec_run(["/bin/sh", "-c", "touch /tmp/x"]).exit_code == 0
        assert release.node.alive(pod), f"{pod.name}: liveness probe failed"


@dataclass
class Traffic:
    """Recommend calls from the host, round robin over the gateway pods, until stopped."""

    addresses: list[str]
    api_key: str
    interval_s: float = 0.05
    codes: Counter[str] = field(default_factory=Counter)
    versions: list[str] = field(default_factory=list)
    degraded: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clients = [Client(a, timeout_s=5, api_key=self.api_key) for a in self.addresses]
        i = 0
        while not self._stop.is_set():
            client = clients[i % len(clients)]
            try:
                reply = client.recommend(str(1 + i % 50), k=10)
            except grpc.RpcError as e:
                self.codes[e.code().name] += 1
                self.errors.append(f"{e.code().name}: {e.details()}")
            else:
                self.codes["OK"] += 1
                self.versions.append(reply.artifact_version)
                self.degraded.update(reply.degraded_reasons)
            i += 1
            time.sleep(self.interval_s)
        for c in clients:
            c.close()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_upgrade_trains_a_new_version_and_rolls_a_backend_without_a_failed_request(release: Release) -> None:
    with Traffic(gateway_addresses(release), smoke_key(release)) as traffic:
        time.sleep(2)
        before = set(traffic.versions)
        release.run_hooks("pre-upgrade")  # the trainer Job: a new version becomes CURRENT
        exit_codes = release.roll("ranking")
        # Every backend polls CURRENT; wait until the responses come from the new version.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(traffic.versions[-10:]) <= before:
            time.sleep(0.5)
        time.sleep(2)
    print(f"traffic during the upgrade: {dict(traffic.codes)}, degraded: {dict(traffic.degraded)}")
    assert traffic.codes["OK"] > 50
    assert set(traffic.codes) == {"OK"}, traffic.errors[:5]
    assert exit_codes == [0] * len(exit_codes), "an old ranking pod did not shut down gracefully"
    (new,) = set(traffic.versions[-10:])
    assert new not in before
