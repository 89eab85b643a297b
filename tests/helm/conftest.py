from __future__ import annotations

import pytest

from tests.helm.chart import VALUES_FILES, Release, load_values, render


@pytest.fixture(scope="session")
def releases() -> dict[str, Release]:
    """One render per values file, shared by every chart test."""
    out = {}
    for name in VALUES_FILES:
        values = load_values(name)
        out[name] = Release(name, values, render(values))
    return out


@pytest.fixture(scope="session", params=list(VALUES_FILES))
def release(request: pytest.FixtureRequest, releases: dict[str, Release]) -> Release:
    return releases[request.param]
