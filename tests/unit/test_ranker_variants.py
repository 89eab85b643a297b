"""bench/ranker_variants.py: what a variant may set, how it is read, and which cache it shares."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bench.validation import apply, base_config, parse_variant

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ranker_variants.py"


def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ranker_variants", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_read_settings_and_only_the_rankers_own_share_the_defaults_cache() -> None:
    rv = tool()
    name, pairs = parse_variant("fusion:fusion.fused=ease,cooc,seqease,ranker.seeds=1,fusion.k=30")
    assert name == "fusion"
    assert pairs == [("fusion.fused", "ease,cooc,seqease"), ("ranker.seeds", "1"), ("fusion.k", "30")]
    config = apply(base_config(9999), pairs)
    assert (
        config.fusion.fused == ("ease", "cooc", "seqease")
        and config.ranker.seeds == 1
        and config.fusion.k == 30.0
    )
    assert config.seed == 9999 and config.protocol.name == "stratified"
    assert rv.setting_key([]) == ""
    assert (
        rv.setting_key([("ranker.rounds", "250"), ("ranker.seeds", "1")]) == ""
    )  # the ranker's own settings
    fused = rv.setting_key([("fusion.fused", "ease,cooc,seqease")])
    folds = rv.setting_key([("protocol.folds", "3"), ("ranker.rounds", "250")])
    assert fused and folds and fused != folds
    assert folds == rv.setting_key([("protocol.folds", "3")])  # the ranker's settings never split a cache


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "typo:ranker.round=250"], "unknown setting 'ranker.round'"),
        (["--variant", "k:fusion.k=wide"], "fusion.k: 'wide' is not a float"),
        (["--variant", "fast:ranker.rounds=many"], "ranker.rounds: 'many' is not a int"),
        (["--variant", "k3:protocol.folds=three"], "protocol.folds: 'three' is not a int"),
        (["--variant", "ranker.rounds=250"], "expected NAME:SETTING=VALUE"),
        (["--variant", "none:ranker.seeds=0"], "ranker: rounds and seeds must be >= 1"),
        (["--variant", "split:protocol.ratio=1.5"], "invalid protocol setting ratio=1.5"),
        (["--splits", "42"], "expected OUTER:INNER seeds"),
        (["--inner-share", "1.5"], "--inner-share: '1.5': expected a share between 0 and 1"),
        ([], "u.data: run bench/accuracy_ml100k.py"),  # --data is an empty directory
    ],
)
def test_bad_arguments_exit_with_a_message_naming_them(args: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--data", str(tmp_path), "--out", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.json").exists()
