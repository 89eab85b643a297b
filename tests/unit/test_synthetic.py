from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from services.common import ranking_features as rf
from services.common.artifacts import open_current
from services.trainer.synthetic import SyntheticConfig, build_index, generate


def test_ivf_reaches_the_recall_target_against_exact_search() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((32, 16)).astype(np.float32)
    items = (centers[rng.integers(0, 32, 20_000)] + 0.5 * rng.standard_normal((20_000, 16))).astype(
        np.float32
    )
    index, info = build_index(items, items[:30], k=100, target=0.95, seed=0, flat_max=1000)
    assert info["type"].startswith("ivf") and info["recall@100"] >= 0.95
    assert index.nprobe == info["nprobe"]


def test_small_catalogue_is_a_complete_servable_version(tmp_path: Path) -> None:
    generate(SyntheticConfig(out=tmp_path, items=3000, users=40, dim=8, clusters=8, trees=5, candidates=100))
    version = open_current(tmp_path)  # every file present and checksummed
    assert version.manifest["features"]["ranker"] == list(rf.RANKER_FEATURES)
    assert np.load(version.file("item_features.npy")).shape == (3000, len(rf.ITEM_FEATURES))
    history = json.loads(version.file("user_history.json").read_text())
    assert len(history) == 40 and all(len(items) == 50 for items in history.values())
    import lightgbm as lgb

    assert lgb.Booster(model_file=str(version.file("ranker.txt"))).num_trees() == 5
