from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.artifacts import ArtifactVersion
from tests.support import BUNDLED_DATA, light_pipeline, redis_server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole session; tests use distinct key prefixes or flush it."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> ArtifactVersion:
    """One real `recsys train` on the bundled MovieLens latest-small (every source and stage, the test
    pipeline's sizes), shared by the whole session."""
    from services.trainer.train import TrainConfig, train

    root = tmp_path_factory.mktemp("artifacts")
    return train(TrainConfig(data=BUNDLED_DATA, out=root, pipeline=light_pipeline(), progress=False))


@pytest.fixture(scope="session")
def artifacts_root(trained: ArtifactVersion) -> Path:
    return trained.path.parent
