"""The runner's translations of Kubernetes notation (no engine needed)."""

from __future__ import annotations

import pytest

from tests.containers.pods import Unsupported, cpu_limit, expand, memory_limit


def test_cpu_and_memory_quantities() -> None:
    assert cpu_limit("500m") == 500_000_000
    assert cpu_limit("2") == 2_000_000_000
    assert cpu_limit("1.5") == 1_500_000_000
    assert memory_limit("768Mi") == 768 * 2**20
    assert memory_limit("3Gi") == 3 * 2**30
    assert memory_limit("256M") == 256 * 10**6
    with pytest.raises(Unsupported):
        memory_limit("1Ti")


def test_variable_references_expand_as_kubernetes_does() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)", env) == "x-y"
    assert expand("$(UNDEFINED)", env) == "$(UNDEFINED)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("redis://:$(A)@host", env) == "redis://:x@host"
