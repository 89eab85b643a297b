"""An A/B arm served by a DCN-v2 version over the wire: LightGBM (the session's version, CURRENT) against
a version whose ranker is DCN-v2 (scored from ONNX by onnxruntime) and whose candidates include the
two-tower source (its user vector computed from the live history), pinned for the arm."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.client import Client, event
from services.common.artifacts import ArtifactVersion, open_version, set_current
from services.gateway import experiments as ex
from services.local import LocalPlatform
from tests.support import BUNDLED_DATA, RELAXED_BUDGETS, light_pipeline

#: Fewer sources than the session version's (the quick ones), so the second train stays short.
SOURCES = "ease,cooc,recent,als,content,popular,twotower"


@pytest.fixture(scope="module")
def versions(trained: ArtifactVersion, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(root, the LightGBM version = CURRENT, the DCN-v2 version = PINNED)."""
    from services.trainer.train import TrainConfig, train

    root = tmp_path_factory.mktemp("deep-versions")
    shutil.copytree(trained.path, root / trained.version)
    deep = light_pipeline(
        f"sources={SOURCES}",
        "fusion.fused=ease,cooc,als,twotower",
        "twotower.epochs=2",
        "ranker.family=dcnv2",
        "ranker.deep_epochs=2",
        "protocol.windows=1",
    )
    v2 = train(TrainConfig(data=BUNDLED_DATA, out=root, pipeline=deep, progress=False))
    set_current(root, trained.version)
    (root / "PINNED").write_text(f"{v2.version}\n")
    return root, trained.version, v2.version


@pytest.fixture(scope="module")
def running(
    versions: tuple[Path, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPlatform]:
    root, lightgbm, deep = versions
    warm = sorted(json.loads(open_version(root, lightgbm).file("user_history.json").read_text()))
    work = tmp_path_factory.mktemp("deep-platform")
    exp_file = work / "experiments.yaml"
    arms = [
        {"name": "lightgbm", "weight": 50},
        {"name": "dcnv2", "weight": 50, "overrides": {"version": deep}},
    ]
    config = {
        "qa": {"allow": warm[:5]},  # the test forces each arm for one of them
        "experiments": [{"id": "ranker", "layer": "ranking", "salt": "deep-it", "arms": arms}],
    }
    exp_file.write_text(yaml.safe_dump(config))
    with LocalPlatform.on_free_ports(
        root,
        work / "logs",
        extra_args={"gateway": ["--experiments", str(exp_file), *RELAXED_BUDGETS]},
    ) as platform:
        yield platform


def test_an_arm_is_ranked_by_dcnv2_over_the_wire(
    running: LocalPlatform, versions: tuple[Path, str, str]
) -> None:
    root, lightgbm, deep = versions
    manifest = open_version(root, deep).manifest
    assert manifest["ranker"]["family"] == "dcnv2" and "twotower" in manifest["pipeline"]["sources"]
    warm = sorted(json.loads(open_version(root, lightgbm).file("user_history.json").read_text()))
    with Client(running.address("gateway")) as client:
        served = {}
        for arm, version in (("lightgbm", lightgbm), ("dcnv2", deep)):
            r = client.recommend(warm[3], k=20, context={ex.FORCE_KEY: f"ranker={arm}"})
            assert [(a.experiment, a.arm) for a in r.assignments] == [("ranker", arm)]
            assert r.artifact_version == version and not r.degraded, r.degraded_reasons
            assert len(r.items) == 20
            served[arm] = [i.item_id for i in r.items]
        assert served["lightgbm"] != served["dcnv2"]
        # a click moves the DCN-v2 arm's answer at once (the two-tower user vector among its inputs)
        client.feedback([event(warm[3], served["dcnv2"][0], "click")])
        again = client.recommend(warm[3], k=20, context={ex.FORCE_KEY: "ranker=dcnv2"})
        assert not again.degraded and served["dcnv2"][0] not in [i.item_id for i in again.items]
        # explanations are the trees' (SHAP): the DCN-v2 arm ranks, undegraded, and says why there are none
        explained = client.recommend(warm[3], k=5, context={ex.FORCE_KEY: "ranker=dcnv2"}, explain=True)
        assert len(explained.items) == 5 and not explained.degraded
        assert all("dcnv2 ranker gives no per-feature" in e.unavailable for e in explained.explanations)
