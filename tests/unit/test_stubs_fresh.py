"""The checked-in stubs are exactly what protoc generates from protos/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.support import REPO


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

    fresh = generate.generate(tmp_path)
    assert fresh, "protoc generated nothing"
    checked_in = REPO / "protos" / "recsys" / "v1"
    assert sorted(p.name for p in fresh) == sorted(p.name for p in checked_in.glob("*_pb2*.py*"))
    stale = [p.name for p in fresh if p.read_bytes() != (checked_in / p.name).read_bytes()]
    assert not stale, f"stale stubs {stale}: run `python protos/generate.py` and commit the result"
