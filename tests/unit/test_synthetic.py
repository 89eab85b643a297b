from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from services.common.artifacts import open_current
from services.common.ranker_features import ITEM_FEATURES, ranker_features
from services.common.sources.tables import NeighbourTable
from services.retrieval.model import RetrievalModel
from services.trainer.pipeline import PipelineConfig
from services.trainer.synthetic import SyntheticConfig, generate


def test_small_catalogue_is_a_complete_servable_version_of_the_default_pipeline(tmp_path: Path) -> None:
    generate(SyntheticConfig(out=tmp_path, items=3000, users=40, dim=8, clusters=8, trees=6, candidates=100))
    version = open_current(tmp_path)  # every file present and checksummed
    sources = version.manifest["pipeline"]["sources"]
    assert sources == list(PipelineConfig().sources)  # every source of the default pipeline, at scale
    assert version.manifest["features"]["ranker"] == ranker_features(sources)
    assert np.load(version.file("item_features.npy")).shape == (3000, len(ITEM_FEATURES))
    history = json.loads(version.file("user_history.json").read_text())
    assert len(history) == 40 and all(len(items) == 50 for items in history.values())
    import lightgbm as lgb

    models = version.manifest["ranker"]["models"]
    assert (
        sum(lgb.Booster(model_file=str(version.file(f"ranker_{i}.txt"))).num_trees() for i in range(models))
        == 6
    )
    # the item-item tables have `neighbours` links per item, and the retrieval service loads them all
    table = NeighbourTable.load(version.file("ease.table.npz"), 3000, 3000, "ease")
    assert set(np.diff(table.indptr).tolist()) == {20}
    model = RetrievalModel.load(version)
    assert set(model.sources) == set(sources) and model.fusion.candidates == 100
