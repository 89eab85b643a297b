"""bench/ranker_variants.py: what a variant may set, how it is read, and which cache it shares."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from services.trainer.offline import OfflineConfig

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ranker_variants.py"


def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ranker_variants", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_read_tuple_fields_and_only_ranker_fields_share_the_defaults_cache() -> None:
    rv = tool()
    name, changes = rv.parse_variant("fusion:fused=ease,cooc,seqease,ranker_seeds=1,fusion_k=30")
    assert name == "fusion"
    assert changes == {"fused": ("ease", "cooc", "seqease"), "ranker_seeds": 1, "fusion_k": 30.0}
    defaults = OfflineConfig()
    assert rv.setting_key(defaults) == ""
    assert rv.setting_key(OfflineConfig(max_rounds=250, ranker_seeds=1)) == ""  # the ranker's own fields
    fused = rv.setting_key(OfflineConfig(fused=("ease", "cooc", "seqease")))
    folds = rv.setting_key(OfflineConfig(ranker_folds=3, max_rounds=250))
    assert fused and folds and fused != folds
    assert folds == rv.setting_key(OfflineConfig(ranker_folds=3))  # the ranker's fields never split a cache


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "split:ratio=0.8"], "'ratio' cannot vary: it defines the validation split"),
        (["--variant", "typo:max_round=250"], "'max_round' is not a field of OfflineConfig"),
        (["--variant", "k:fusion_k=wide"], "fusion_k: could not convert"),
        (["--variant", "fast:max_rounds=many"], "max_rounds: invalid literal"),
        (["--variant", "k3:ranker_folds=three"], "ranker_folds: invalid literal"),  # a stacking field
        (["--variant", "max_rounds=250"], "expected NAME:FIELD=VALUE"),
        (["--variant", "none:ranker_seeds=0"], "ranker_seeds must be >= 1, got 0"),
        (["--splits", "42"], "expected OUTER:INNER seeds"),
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
