"""`recsys train` on the bundled MovieLens latest-small (the session's `trained` fixture), and its CLI."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from services.common.artifacts import ArtifactVersion, open_current, open_version
from services.common.ranker_features import ITEM_FEATURES, USER_FEATURES, ranker_features
from services.trainer.cli import add_arguments, main
from services.trainer.data import load
from tests.support import BUNDLED_DATA, TEST_SETTINGS

SOURCE_FILES = {
    "ease.table.npz",
    "cooc.table.npz",
    "rp3.table.npz",
    "seq.table.npz",
    "seqease.table.npz",
    "recent.table.npz",
    "als.vectors.npy",
    "als.index.faiss",
    "content.vectors.npy",
    "content.index.faiss",
    "popular.counts.npy",
}
ARTIFACT_FILES = {
    "item_ids.json",
    "items.csv",
    "item_features.npy",
    "user_ids.json",
    "user_features.npy",
    "user_history.json",
    "content_space.json",
    "interactions.npz",
    "ranker_0.txt",
    "ranker_1.txt",
    *SOURCE_FILES,
}


def documented_files() -> set[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "artifacts.md").read_text()
    return set(re.findall(r"^(?:<root>/<version>/)?([a-z_<>]+(?:\.[a-z_]+)+)\s", text, re.M)) - {
        "manifest.json"
    }


def test_every_documented_file_is_written_and_verified(trained: ArtifactVersion) -> None:
    sources = trained.manifest["pipeline"]["sources"]
    documented = {
        name.replace("<i>", str(i)).replace("<source>", s)
        for name in documented_files()
        for i in range(trained.manifest["ranker"]["models"])
        for s in sources
    }
    written = set(open_version(trained.path.parent, trained.version).manifest["files"])
    assert written == ARTIFACT_FILES
    assert written <= documented, written - documented
    assert open_current(trained.path.parent).version == trained.version
    assert not [p for p in trained.path.parent.iterdir() if p.name.startswith(".staging")]


def test_the_exported_version_knows_every_user_and_item_it_was_given(trained: ArtifactVersion) -> None:
    """The holdout is for metrics only: the exported fit is on the whole log."""
    log = load(BUNDLED_DATA).log
    manifest = trained.manifest
    user_ids = json.loads(trained.file("user_ids.json").read_text())
    item_ids = json.loads(trained.file("item_ids.json").read_text())
    assert set(user_ids) == set(log.users.tolist())
    assert set(log.items.tolist()) <= set(item_ids)
    history = json.loads(trained.file("user_history.json").read_text())
    for user in ("1", "414"):
        assert set(history[user]) == set(log.items[log.users == user].tolist())
    latest = log.items[log.users == "1"][-1]
    assert history["1"][0] == latest  # most recent first
    assert manifest["training"]["final_fit"]["interactions"] == len(log)
    fitted_on = manifest["metrics"]["fitted_on"]["interactions"]
    assert fitted_on + manifest["metrics"]["held_out"]["interactions"] == len(log)
    assert (
        manifest["training"]["evaluation_fit"]["groups"] > 0
        and manifest["training"]["final_fit"]["groups"] > 0
    )


def test_matrices_line_up_with_the_feature_schema(trained: ArtifactVersion) -> None:
    manifest = trained.manifest
    item_ids = json.loads(trained.file("item_ids.json").read_text())
    user_ids = json.loads(trained.file("user_ids.json").read_text())
    assert np.load(trained.file("item_features.npy")).shape == (len(item_ids), len(ITEM_FEATURES))
    assert np.load(trained.file("user_features.npy")).shape == (len(user_ids), len(USER_FEATURES))
    sources = manifest["pipeline"]["sources"]
    features = dict(manifest["features"])
    reference = features.pop("reference")
    assert features == {
        "user": list(USER_FEATURES),
        "item": list(ITEM_FEATURES),
        "ranker": ranker_features(sources),
        "dtype": "float32",
    }
    assert manifest["ranker"]["models"] == 2
    # a reference histogram per feature of each list, over every row it was computed from
    assert reference["users"] == 500 and reference["rows"] > 0
    for key, rows in (("ranker", reference["rows"]), ("user", len(user_ids)), ("item", len(item_ids))):
        assert list(reference[key]) == features[key]
        for name, h in reference[key].items():
            assert len(h["counts"]) == len(h["edges"]) + 1 <= 10 + 1, name
            assert h["edges"] == sorted(set(h["edges"])), name
            assert sum(h["counts"]) + h["missing"] == rows, name
    assert set(manifest["pipeline"]["source_params"]) == set(sources)
    assert manifest["pipeline"]["index"]["als"]["type"] == "flat"  # below the ANN threshold


def test_manifest_describes_data_and_metrics(trained: ArtifactVersion) -> None:
    manifest = trained.manifest
    data = manifest["data"]
    assert data["source"] == "ml-latest-small" and "/" not in data["source"]
    assert re.fullmatch(r"[0-9a-f]{64}", data["fingerprint"])
    assert data["counts"]["interactions"] == 100836
    metrics = manifest["metrics"]
    assert metrics["protocol"] == "leave-last" and metrics["users"] == 610  # every user with history
    for name in ("pipeline", "retrieval", *manifest["pipeline"]["sources"]):
        assert set(metrics["accuracy"][name]) == {"recall@10", "precision@10", "ndcg@10", "map@10"}


def test_the_pipeline_beats_its_retrieval_and_popularity_on_the_holdout(trained: ArtifactVersion) -> None:
    accuracy = trained.manifest["metrics"]["accuracy"]
    for metric in ("ndcg@10", "map@10"):
        assert accuracy["pipeline"][metric] > accuracy["retrieval"][metric], metric
        assert accuracy["pipeline"][metric] > accuracy["popular"][metric], metric


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_main_stops_on_a_malformed_row_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "log.csv"
    rows = [f"u{i % 7},i{i % 13},{1 + i % 5},{1000 + i}" for i in range(15)]
    rows.insert(15, "u1,i2,abc,999999")  # line 17 (header is line 1)
    data.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "artifacts"
    assert main(parse(["--data", str(data), "--out", str(out), "--no-progress"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "recsys train: log.csv line 17: rating 'abc' is not a number"
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "ease.lam=0"], "recsys train: source ease: lam must be > 0"),
        (["--set", "rp3.max_items=99999"], "recsys train: source rp3: max_items 99,999 is too many"),
        (["--set", "ease.lamda=1"], "recsys train: unknown setting 'ease.lamda'"),
        (["--set", "ranker.rounds=many"], "recsys train: ranker.rounds: 'many' is not a int"),
        (["--sources", "als,bm25"], "recsys train: sources: unknown ['bm25']"),
        (["--candidates", "0"], "recsys train: fusion: candidates must be in 1..2000"),
        (["--leave-n", "0"], "recsys train: invalid protocol setting leave_n=0"),
    ],
)
def test_main_names_a_bad_setting_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    data = tmp_path / "log.csv"
    data.write_text(
        "user,item,rating,timestamp\n"
        + "".join(f"u{i % 9},i{(i * 7) % 31},4,{1000 + i}\n" for i in range(400))
    )
    out = tmp_path / "artifacts"
    settings = [arg for pair in TEST_SETTINGS for arg in ("--set", pair)]
    assert main(parse(["--data", str(data), "--out", str(out), "--no-progress", *settings, *flags])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_too_small_a_log_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "tiny.csv"
    data.write_text("user,item,rating,timestamp\nu1,i1,4,1\nu2,i2,4,2\n")
    assert main(parse(["--data", str(data), "--out", str(tmp_path / "a"), "--no-progress"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recsys train: ")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_an_artifact_root_that_cannot_be_written_stops_before_fitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    out = blocker / "artifacts"
    assert main(parse(["--data", str(BUNDLED_DATA), "--out", str(out), "--no-progress"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recsys train: --out {out}: cannot create the artifact root (Not a directory)"]
