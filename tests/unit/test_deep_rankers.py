"""The deep ranker families (services.trainer.deep_ranker) on a small split: each learns (beats
popularity), its ONNX export scores as torch does, and the ranking service's ONNX scorer refuses a
model whose inputs are not the manifest's features."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from services.common.artifacts import ArtifactError
from services.common.ranker import ONNX_FILE
from services.ranking.onnx_scorer import OnnxScorer
from services.trainer.deep_ranker import DeepModel
from services.trainer.evaluation import evaluate
from services.trainer.export import export
from services.trainer.pipeline import Fitted, PipelineConfig, fit
from tests.support import REPO
from tests.unit.test_pipeline import small, synthetic
from tests.unit.test_two_tower import run_python

FAMILIES = ("dcnv2", "deepfm")


def deep(family: str) -> PipelineConfig:
    return small().with_settings(
        [
            f"ranker.family={family}",
            "ranker.deep_epochs=8",
            "ranker.deep_hidden=32",
            "ranker.deep_groups_per_batch=16",
        ]
    )


@functools.cache
def fitted(family: str) -> tuple[Fitted, float, float]:
    data = synthetic()
    config = deep(family)
    train, test = config.protocol.holdout(data.log, seed=1)
    model = fit(data.known_from(train), train, config)
    metrics = evaluate(model, test)["accuracy"]
    return model, metrics["pipeline"]["ndcg@10"], metrics["popular"]["ndcg@10"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_deep_ranker_learns(family: str) -> None:
    model, pipeline, popular = fitted(family)
    (deep_model,) = model.ranker.models
    assert isinstance(deep_model, DeepModel) and deep_model.family == family
    assert pipeline > popular


@pytest.mark.parametrize("family", FAMILIES)
def test_the_onnx_export_scores_as_torch(family: str, tmp_path: Path) -> None:
    model, _, _ = fitted(family)
    version = export(tmp_path, model, {})
    assert version.manifest["ranker"]["family"] == family
    assert version.manifest["ranker"]["inputs"]["features"] == model.config.feature_names
    names = model.config.feature_names
    scorer = OnnxScorer(version.file(ONNX_FILE), len(names), 1, "test")
    (torch_model,) = model.ranker.models
    users = sorted(model.stage.histories)
    for user in users[::7]:
        cand = model.stage.candidates(user, model.config)
        matrix = model.stage.features(user, cand, model.config)
        rows = cand.rows.copy()
        rows[::5] = -1  # unknown items take the unknown embedding in both
        np.testing.assert_allclose(
            scorer.predict(matrix, rows), torch_model.predict(matrix, rows), rtol=0, atol=1e-5
        )


def test_an_onnx_model_of_other_inputs_is_refused(tmp_path: Path) -> None:
    model, _, _ = fitted("dcnv2")
    version = export(tmp_path, model, {})
    width = len(model.config.feature_names)
    with pytest.raises(
        ArtifactError,
        match=rf"{ONNX_FILE} input features has shape .*: {width} features, the manifest lists {width + 1}",
    ):
        OnnxScorer(version.file(ONNX_FILE), width + 1, 1, "artifact x")


def test_the_ranking_service_loads_and_scores_a_deep_version_without_torch(tmp_path: Path) -> None:
    model, _, _ = fitted("dcnv2")
    version = export(tmp_path, model, {})
    user = sorted(model.stage.histories)[0]
    cand = model.stage.candidates(user, model.config)
    matrix = model.stage.features(user, cand, model.config)
    expected = model.ranker.score(matrix, cand.rows)
    np.save(tmp_path / "matrix.npy", matrix)
    np.save(tmp_path / "rows.npy", cand.rows)
    done = run_python(
        f"""
        import numpy as np
        from pathlib import Path
        from services.common.artifacts import open_version
        from services.ranking.service import Config, Model
        root = Path({str(tmp_path)!r})
        served = Model.load(open_version(root, {version.version!r}), Config())
        assert served.family == "dcnv2" and not served.scorers
        scores = served.ranker.score(np.load(root / "matrix.npy"), np.load(root / "rows.npy"))
        np.save(root / "scores.npy", scores)
        """,
        REPO,
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, rtol=0, atol=1e-4)


def test_without_the_deep_extra_a_deep_family_says_which_extra(tmp_path: Path) -> None:
    done = run_python(
        f"""
        from services.cli import main
        sys.exit(main(["train", "--set", "ranker.family=deepfm", "--out", {str(tmp_path / "artifacts")!r}]))
        """,
        tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "recsys train: ranker.family deepfm needs PyTorch, the optional extra recsys[deep]: pip install 'recsys[deep]'"
    ]
