"""Start-up and artifacts over the wire: NOT_SERVING until load, hot reload, corrupt versions refused,
Redis unreachable, graceful shutdown."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from grpc_health.v1 import health_pb2

from services.client import Client
from services.common.artifacts import ArtifactVersion, set_current
from services.healthcheck import health_status
from services.local import LocalPlatform, free_port
from tests.support import RELAXED_BUDGETS

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def copy_version(trained: ArtifactVersion, root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(trained.path, target)
    return target


def test_backends_serve_only_after_artifacts_load_and_pick_up_new_versions(
    trained: ArtifactVersion, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    root.mkdir()
    platform = LocalPlatform.on_free_ports(
        root,
        tmp_path / "logs",
        event_log=tmp_path / "events.jsonl",
        extra_args={
            **{s: ["--reload-interval-s", "0.2"] for s in ("features", "retrieval", "ranking")},
            "gateway": RELAXED_BUDGETS,
        },
    )
    try:
        for service in ("features", "retrieval", "ranking", "gateway"):
            platform.start_service(service)
        platform.wait_serving("gateway")
        for backend in ("features", "retrieval", "ranking"):
            platform.wait_logged(backend, "artifacts unavailable")
            assert health_status(platform.address(backend)) == NOT_SERVING, backend

        copy_version(trained, root, "v1")
        set_current(root, "v1")
        for backend in ("features", "retrieval", "ranking"):
            platform.wait_serving(backend, timeout_s=60)
        with Client(platform.address("gateway")) as client:
            first = client.recommend("1", k=5)
            assert first.artifact_version == "v1" and not first.degraded

            # A corrupt new version is refused and v1 keeps serving.
            bad = copy_version(trained, root, "v2-corrupt")
            with (bad / "ranker_0.txt").open("a") as f:
                f.write("tampered\n")
            set_current(root, "v2-corrupt")
            platform.wait_logged("ranking", "artifact version refused")
            still = client.recommend("1", k=5)
            assert still.artifact_version == "v1" and not still.degraded

            # A good new version is picked up without a restart.
            copy_version(trained, root, "v3")
            set_current(root, "v3")
            deadline = time.monotonic() + 30
            while client.recommend("1", k=5).artifact_version != "v3":
                assert time.monotonic() < deadline, "v3 was not picked up"
                time.sleep(0.2)
    finally:
        codes = platform.stop()
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


def test_corrupt_artifacts_at_start_keep_the_service_not_serving(
    trained: ArtifactVersion, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    version = copy_version(trained, root, "broken")
    (version / "als.index.faiss").write_bytes(b"not an index")
    set_current(root, "broken")
    platform = LocalPlatform.on_free_ports(root, tmp_path / "logs")
    try:
        platform.start_service("retrieval")
        platform.wait_logged("retrieval", "file als.index.faiss is corrupt")
        assert health_status(platform.address("retrieval")) == NOT_SERVING
    finally:
        platform.stop()


def test_a_version_missing_a_sources_file_is_not_served_and_says_why(
    trained: ArtifactVersion, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    version = copy_version(trained, root, "incomplete")
    (version / "seqease.table.npz").unlink()
    set_current(root, "incomplete")
    platform = LocalPlatform.on_free_ports(root, tmp_path / "logs")
    try:
        platform.start_service("retrieval")
        platform.wait_logged("retrieval", "file seqease.table.npz is missing")
        assert health_status(platform.address("retrieval")) == NOT_SERVING
    finally:
        platform.stop()


def test_unreachable_redis_is_a_clear_error(artifacts_root: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "features",
            "--port",
            str(free_port()),
            "--artifacts-dir",
            str(artifacts_root),
            "--redis-url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "redis" in last.lower() and url in last, result.stderr
