"""The compiled-tree path scores exactly as LightGBM does (within 1e-6), on the real trained ranker."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pytest

from recsys.v1 import common_pb2
from services.common import fusion
from services.common.artifacts import ArtifactVersion
from services.common.ranker import model_file
from services.common.ranker_features import assemble, ranker_features
from services.ranking.trees import TOLERANCE, TreeScorer
from services.retrieval.model import RetrievalModel

F32 = npt.NDArray[np.float32]


def realistic_rows(trained: ArtifactVersion, users: tuple[int, ...] = (3, 30, 300), n: int = 300) -> F32:
    """Ranker input assembled the way serving does: each user's fused candidates from the version's
    sources, with the version's own user and item feature rows (and a cold user's NaN profile)."""
    retrieval = RetrievalModel.load(trained)
    sources = list(trained.manifest["pipeline"]["sources"])
    items = np.load(trained.file("item_features.npy"))
    user_rows = np.load(trained.file("user_features.npy"))
    user_ids = json.loads(trained.file("user_ids.json").read_text())
    history = json.loads(trained.file("user_history.json").read_text())
    blocks = []
    for index in users:
        user = user_ids[index]
        profile = common_pb2.UserFeatures(
            user_id=user, recent_item_ids=history[user][:50], seen_item_ids=history[user]
        )
        columns = fusion.generate(retrieval.sources, retrieval.history(profile), n, retrieval.fusion)
        blocks.append(assemble(sources, user_rows[index], items[columns.rows], columns))
    cold = fusion.generate(
        retrieval.sources, retrieval.history(common_pb2.UserFeatures()), n, retrieval.fusion
    )
    blocks.append(assemble(sources, np.empty(0, np.float32), items[cold.rows], cold))
    return np.vstack(blocks)


@pytest.mark.parametrize("model", [0, 1])
def test_compiled_trees_match_lightgbm_on_the_trained_ranker(
    trained: ArtifactVersion, tmp_path: Path, model: int
) -> None:
    assert int(trained.manifest["ranker"]["models"]) == 2  # the test pipeline's two seeded models
    path = trained.file(model_file(model))
    booster = lgb.Booster(model_file=str(path))
    scorer = TreeScorer(booster, path)
    matrix = realistic_rows(trained)
    assert matrix.shape == (4 * 300, len(trained.manifest["features"]["ranker"]))
    assert np.isnan(matrix).any() and np.isfinite(matrix).any()  # both kinds of value reach the trees
    interpreted = scorer.predict(matrix)
    assert scorer.kind == "lightgbm"
    np.testing.assert_array_equal(interpreted, booster.predict(matrix, num_threads=1))
    assert scorer.compile(tmp_path) and scorer.kind == "lleaves"
    compiled = scorer.predict(matrix)
    assert np.max(np.abs(compiled - interpreted)) <= TOLERANCE
    assert np.array_equal(
        np.argsort(-compiled, kind="stable")[:10], np.argsort(-interpreted, kind="stable")[:10]
    )
    assert len(list(tmp_path.glob("*.so"))) == 1  # cached by the model's checksum
    again = TreeScorer(lgb.Booster(model_file=str(path)), path)
    assert again.compile(tmp_path) and len(list(tmp_path.glob("*.so"))) == 1  # from the cache
    assert np.max(np.abs(again.predict(matrix) - interpreted)) <= TOLERANCE


def test_compiled_trees_match_on_a_deeper_forest_with_missing_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, len(ranker_features(["ease", "als", "popular"]))))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = rng.integers(0, 4, 3000)
    booster = lgb.train(
        {"objective": "lambdarank", "num_leaves": 15, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, y, group=[50] * 60),
        num_boost_round=60,
    )
    path = tmp_path / model_file(0)
    booster.save_model(str(path))
    scorer = TreeScorer(lgb.Booster(model_file=str(path)), path)
    assert scorer.compile(tmp_path / "cache")
    probe = rng.normal(size=(500, x.shape[1])).astype(np.float32)
    probe[rng.random(probe.shape) < 0.2] = np.nan
    reference = booster.predict(probe.astype(np.float64), num_threads=1)
    assert np.max(np.abs(scorer.predict(probe) - reference)) <= TOLERANCE
