"""The compiled-tree path scores exactly as LightGBM does (within 1e-6), on the real trained ranker."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from services.common import ranking_features as rf
from services.common.artifacts import ArtifactVersion
from services.ranking.trees import TOLERANCE, TreeScorer


def realistic_rows(trained: ArtifactVersion, n: int = 500) -> np.ndarray:
    """Ranker input assembled the way serving does, from the artifact's own user and item rows."""
    rng = np.random.default_rng(1)
    items = np.load(trained.file("item_features.npy"))
    users = np.load(trained.file("user_features.npy"))
    vectors = np.load(trained.file("item_embeddings.npy"))
    rows = rng.choice(len(items), n, replace=False)
    scores = np.sort(rng.normal(0.5, 0.2, n))[::-1].astype(np.float32)
    recent = rf.recent_profile(vectors[rng.choice(len(vectors), 20)], vectors.shape[1])
    return rf.assemble(users[3], items[rows], scores, vectors[rows], recent)


def test_compiled_trees_match_lightgbm_on_the_trained_ranker(
    trained: ArtifactVersion, tmp_path: Path
) -> None:
    model_file = trained.file("ranker.txt")
    booster = lgb.Booster(model_file=str(model_file))
    scorer = TreeScorer(booster, model_file)
    matrix = realistic_rows(trained)
    interpreted = scorer.predict(matrix)
    assert scorer.kind == "lightgbm"
    assert scorer.compile(tmp_path) and scorer.kind == "lleaves"
    compiled = scorer.predict(matrix)
    assert np.max(np.abs(compiled - interpreted)) <= TOLERANCE
    assert np.array_equal(
        np.argsort(-compiled, kind="stable")[:10], np.argsort(-interpreted, kind="stable")[:10]
    )
    assert len(list(tmp_path.glob("*.so"))) == 1  # cached by the model's checksum


def test_compiled_trees_match_on_a_deeper_forest_with_missing_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, len(rf.RANKER_FEATURES)))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = rng.integers(0, 4, 3000)
    booster = lgb.train(
        {"objective": "lambdarank", "num_leaves": 15, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, y, group=[50] * 60),
        num_boost_round=60,
    )
    model_file = tmp_path / "ranker.txt"
    booster.save_model(str(model_file))
    scorer = TreeScorer(lgb.Booster(model_file=str(model_file)), model_file)
    assert scorer.compile(tmp_path / "cache")
    probe = rng.normal(size=(500, x.shape[1])).astype(np.float32)
    probe[rng.random(probe.shape) < 0.2] = np.nan
    reference = booster.predict(probe.astype(np.float64), num_threads=1)
    assert np.max(np.abs(scorer.predict(probe) - reference)) <= TOLERANCE
