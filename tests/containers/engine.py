"""A Docker engine for the container tier, and the images it runs: the project's (built from its
Dockerfile) and a Redis made from the same base (no registry is needed for either).

The engine is the one DOCKER_HOST (or the default socket) points at; when none answers and this process
may start one (root, `dockerd` installed: `.ci/run` installs docker.io), `dockerd` is started for the
session and stopped afterwards. The base image is the Dockerfile's default when it is present or can be
pulled, else `recsys-base:bookworm`, made once with debootstrap from the machine's Debian mirror and
`docker import` (deploy/base-image.sh, which `make base-image` runs too)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[2]
#: The Dockerfile's default base, and the one made without a registry.
OFFICIAL_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "recsys-base:bookworm"
#: Extra CA certificates of this machine (a TLS-intercepting proxy), passed to the build, never baked in.
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
START_TIMEOUT_S = 60.0

Progress = Callable[[str], None]


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none can be started here (the reason says why)."""


def _client() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException:
        return None
    return client


@contextmanager
def engine(progress: Progress) -> Iterator[docker.DockerClient]:
    """A client of a running engine; starts `dockerd` (and stops it afterwards) when none answers."""
    client = _client()
    if client is not None:
        yield client
        return
    binary = shutil.which("dockerd")
    if binary is None:
        raise EngineUnavailable(
            "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
        )
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers and starting dockerd needs root")
    progress("starting dockerd")
    with tempfile.TemporaryFile() as log:
        daemon = subprocess.Popen([binary], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while (client := _client()) is None:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace").splitlines()[-15:]
                    raise EngineUnavailable("dockerd did not start:\n" + "\n".join(tail))
                time.sleep(0.5)
            yield client
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def _has_image(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def debian_mirror() -> str:
    """The Debian mirror apt uses here (sources.list or deb822 .sources), else deb.debian.org."""
    pattern = re.compile(
        r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+/debian)/?\s*(?:bookworm|$)", re.MULTILINE
    )
    apt = Path("/etc/apt")
    for path in sorted([apt / "sources.list", *apt.glob("sources.list.d/*")]):
        if path.is_file() and (match := pattern.search(path.read_text(errors="replace"))):
            return match.group(1)
    return "http://deb.debian.org/debian"


def base_image(client: docker.DockerClient, progress: Progress) -> str:
    """A Debian bookworm image with python3 and venv for the Dockerfile's PYTHON_IMAGE."""
    for name in (OFFICIAL_BASE, LOCAL_BASE):
        if _has_image(client, name):
            return name
    try:
        client.images.pull(OFFICIAL_BASE)
        return OFFICIAL_BASE
    except docker.errors.APIError as e:
        progress(f"no registry ({str(e).splitlines()[0][:120]}): making {LOCAL_BASE} with debootstrap")
    if shutil.which("debootstrap") is None:
        raise RuntimeError(
            f"cannot pull {OFFICIAL_BASE} and debootstrap is not installed (apt-get install debootstrap)"
        )
    mirror = debian_mirror()
    progress(f"debootstrap bookworm from {mirror}")
    subprocess.run(
        [str(ROOT / "deploy" / "base-image.sh"), LOCAL_BASE, mirror], check=True, capture_output=True
    )
    return LOCAL_BASE


def extra_ca_certs() -> str:
    return "".join(p.read_text() for p in sorted(EXTRA_CA_DIR.glob("*.crt")))


def _build(
    client: docker.DockerClient,
    progress: Progress,
    tag: str,
    *,
    path: str | None = None,
    fileobj: io.BytesIO | None = None,
    buildargs: dict[str, str] | None = None,
) -> None:
    """`docker build` (the engine's builder, as the legacy CLI would), streaming its steps as progress."""
    log: list[str] = []
    stream = client.api.build(
        path=path, fileobj=fileobj, tag=tag, buildargs=buildargs, rm=True, forcerm=True, decode=True
    )
    for chunk in stream:
        if "error" in chunk:
            raise RuntimeError(f"building {tag} failed: {chunk['error']}\n" + "".join(log[-30:]))
        text = str(chunk.get("stream", ""))
        log.append(text)
        if text.startswith("Step "):
            progress(f"{tag}: {text.strip()[:150]}")


def build_project_image(client: docker.DockerClient, tag: str, base: str, progress: Progress) -> str:
    _build(
        client,
        progress,
        tag,
        path=str(ROOT),
        buildargs={"PYTHON_IMAGE": base, "EXTRA_CA_CERTS": extra_ca_certs()},
    )
    return tag


def build_redis_image(client: docker.DockerClient, tag: str, base: str, progress: Progress) -> str:
    """Debian's redis-server on the same base: the chart's Redis (args `redis-server ...`) without a
    registry. No entrypoint, so the chart's args are the command, as with the official image."""
    dockerfile = (
        f"FROM {base}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends redis-server"
        " && rm -rf /var/lib/apt/lists/*\n"
    )
    _build(client, progress, tag, fileobj=io.BytesIO(dockerfile.encode()))
    return tag
