"""The container tier's session: an engine (started when none answers), the images, and the chart
rendered with the tier's values and installed on one Docker network."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.containers import engine
from tests.containers.pods import Node, remove_leftovers
from tests.containers.release import Release
from tests.helm.chart import NAMESPACE, objects, render
from tests.support import TEST_SETTINGS

IMAGE_REPOSITORY, IMAGE_TAG = "recsys", "container-test"
REDIS_IMAGE = ("recsys-redis", "container-test")
GATEWAY_PORT = 50051
#: The tests' pipeline, lighter still (one label window, one ranker seed): the tier trains twice (install
#: and upgrade) to check the image and the chart, not the model; every source is still fitted and served.
TRAINER_SETTINGS = (*TEST_SETTINGS, "protocol.windows=1", "ranker.seeds=1")


def tier_values(**more: Any) -> dict[str, Any]:
    """The chart's defaults with the locally built images and the trainer sized for CI (through
    trainer.extraArgs, which is how a user passes settings too)."""
    extra_args = [a for setting in TRAINER_SETTINGS for a in ("--set", setting)]
    values: dict[str, Any] = {
        "image": {"repository": IMAGE_REPOSITORY, "tag": IMAGE_TAG, "pullPolicy": "Never"},
        "redis": {"image": {"repository": REDIS_IMAGE[0], "tag": REDIS_IMAGE[1], "pullPolicy": "Never"}},
        "trainer": {"extraArgs": extra_args},
    }
    values.update(more)
    return values


@pytest.fixture(scope="session")
def progress(request: pytest.FixtureRequest) -> engine.Progress:
    """Lines on the terminal while the long steps run (pytest captures fixtures' output otherwise)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n[containers {time.monotonic() - started:5.0f} s] {line}", end="", flush=True)

    return say


@pytest.fixture(scope="session")
def docker_client(progress: engine.Progress) -> Iterator[docker.DockerClient]:
    try:
        with engine.engine(progress) as client:
            remove_leftovers(client)
            yield client
    except engine.EngineUnavailable as e:
        pytest.skip(f"container tier: {e}")


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient, progress: engine.Progress) -> None:
    base = engine.base_image(docker_client, progress)
    started = time.monotonic()
    engine.build_project_image(docker_client, f"{IMAGE_REPOSITORY}:{IMAGE_TAG}", base, progress)
    engine.build_redis_image(docker_client, ":".join(REDIS_IMAGE), base, progress)
    size = docker_client.images.get(f"{IMAGE_REPOSITORY}:{IMAGE_TAG}").attrs["Size"]
    progress(f"images built in {time.monotonic() - started:.0f} s; {IMAGE_REPOSITORY} is {size / 1e6:.0f} MB")


@pytest.fixture
def node(docker_client: docker.DockerClient, images: None, tmp_path: Path) -> Iterator[Node]:
    """An empty namespace of its own (for tests that start single pods)."""
    rendered = objects(render(tier_values()))
    node = Node(
        docker_client, rendered, namespace=NAMESPACE, cluster_domain="cluster.local", workdir=tmp_path
    )
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(scope="session")
def release(
    docker_client: docker.DockerClient,
    images: None,
    progress: engine.Progress,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    rendered = objects(render(tier_values()))
    node = Node(
        docker_client,
        rendered,
        namespace=NAMESPACE,
        cluster_domain="cluster.local",
        workdir=tmp_path_factory.mktemp("release"),
    )
    try:
        release = Release(node, rendered, publish={"gateway": [GATEWAY_PORT]})
        started = time.monotonic()
        release.install()
        progress(
            f"release installed in {time.monotonic() - started:.0f} s (Redis, trainer, backends, gateway)"
        )
        yield release
    finally:
        node.close()
