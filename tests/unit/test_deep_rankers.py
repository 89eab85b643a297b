"""The deep ranker families (services.trainer.deep_ranker) on a small split: each learns (beats
popularity), its ONNX export scores as torch does, and the ranking service's ONNX scorer refuses a
model whose inputs are not the manifest's features."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import main as cli_main
from services.common import config as config_module
from services.common.artifacts import ArtifactError, ArtifactVersion, publish, set_current, staging_dir
from services.common.ranker import ONNX_FILE
from services.common.server import serve
from services.local import free_port
from services.ranking.onnx_scorer import OnnxScorer
from services.ranking.service import Config, create
from services.trainer.deep_ranker import DcnV2, DeepModel, Inputs
from services.trainer.evaluation import evaluate
from services.trainer.export import export
from services.trainer.pipeline import Fitted, PipelineConfig, fit
from tests.support import REPO
from tests.unit.test_pipeline import evaluate_settings, small, synthetic, synthetic_csv
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


def with_onnx_of_width(version: ArtifactVersion, root: Path, width: int) -> ArtifactVersion:
    """A copy of `version` (published under `root`, made CURRENT) whose ranker.onnx is a DCN-v2 of
    `width` inputs: every checksum matches, only the model's input schema is wrong."""
    model, _, _ = fitted("dcnv2")
    n_items = model.universe.n_items
    params = model.config.ranker
    inputs = Inputs(torch.zeros(width), torch.ones(width), n_items)
    other = DeepModel(DcnV2(inputs, width, n_items, params), "dcnv2", width)
    staging = staging_dir(root, "wrong")
    for file in version.manifest["files"]:
        if file != ONNX_FILE:
            shutil.copy2(version.path / file, staging / file)
    rng = np.random.default_rng(0)
    other.export_onnx(
        staging / ONNX_FILE, rng.normal(size=(4, width)).astype(np.float32), np.arange(4, dtype=np.int64)
    )
    manifest = {
        k: v
        for k, v in version.manifest.items()
        if k not in ("schema_version", "version", "created_at", "files")
    }
    published = publish(root, staging, "wrong", manifest)
    set_current(root, "wrong")
    return published


def test_a_version_whose_onnx_inputs_differ_from_its_features_is_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _, _ = fitted("dcnv2")
    width = len(model.config.feature_names)
    root = tmp_path / "artifacts"
    with_onnx_of_width(export(tmp_path / "good", model, {}), root, width - 1)

    async def main() -> None:
        config = config_module.parse(
            Config,
            ["--port", str(free_port()), "--artifacts-dir", str(root), "--reload-interval-s", "0.1"],
            env={},
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(create(config), config, stop))
        check = health_pb2.HealthCheckRequest(service="recsys.v1.RankingService")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{config.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                while not any(r.getMessage() == "artifact version refused" for r in caplog.records):
                    assert not task.done(), "the server stopped"
                    await asyncio.sleep(0.05)
                reply = await health.Check(check, timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    (refused,) = [r for r in caplog.records if r.getMessage() == "artifact version refused"]
    assert f"{ONNX_FILE} input features has shape" in refused.reason  # type: ignore[attr-defined]
    assert f"{width - 1} features, the manifest lists {width}" in refused.reason  # type: ignore[attr-defined]


def test_recsys_evaluate_trains_a_deep_family(tmp_path: Path) -> None:
    data = synthetic_csv(tmp_path / "log.csv")
    out = tmp_path / "report"
    deep_settings = ["ranker.family=deepfm", "ranker.deep_epochs=2", "ranker.deep_hidden=16"]
    settings = [*evaluate_settings(), *(arg for s in deep_settings for arg in ("--set", s))]
    assert cli_main(["evaluate", "--data", str(data), "--out", str(out), "--seeds", "1", *settings]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"]["ranker"]["family"] == "deepfm"
    assert "fused candidates + DeepFM ranker" in (out / "report.md").read_text()
