"""The trainer on the bundled MovieLens latest-small (the session's `trained` fixture), and its CLI."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from services.common import ranking_features as rf
from services.common.artifacts import ArtifactVersion, open_current, open_version
from services.trainer.cli import add_arguments, config_from_args, main
from services.trainer.data import Dataset, Item, Log, Tags, load
from services.trainer.pipeline import (
    TrainConfig,
    build_snapshot,
    label_windows,
    sequence_neighbours,
    train,
)
from tests.support import BUNDLED_DATA

ARTIFACT_FILES = {
    "item_ids.json",
    "items.csv",
    "item_embeddings.npy",
    "item_index.faiss",
    "item_features.npy",
    "item_neighbours.npz",
    "popular.json",
    "user_ids.json",
    "user_embeddings.npy",
    "user_features.npy",
    "user_history.json",
    "ranker.txt",
}


def documented_files() -> set[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "artifacts.md").read_text()
    return set(re.findall(r"<version>/(\S+)\s", text)) - {"manifest.json"}


def test_every_documented_file_is_written_and_verified(trained: ArtifactVersion) -> None:
    assert documented_files() <= ARTIFACT_FILES | {"manifest.json"}
    version = open_version(trained.path.parent, trained.version)
    assert set(version.manifest["files"]) == ARTIFACT_FILES
    assert open_current(trained.path.parent).version == trained.version
    assert not [p for p in trained.path.parent.iterdir() if p.name.startswith(".staging")]


def test_matrices_line_up(trained: ArtifactVersion) -> None:
    manifest = trained.manifest
    item_ids = json.loads(trained.file("item_ids.json").read_text())
    user_ids = json.loads(trained.file("user_ids.json").read_text())
    items = np.load(trained.file("item_embeddings.npy"))
    users = np.load(trained.file("user_embeddings.npy"))
    assert items.dtype == users.dtype == np.float32
    assert items.shape == (len(item_ids), manifest["embedding_dim"])
    assert users.shape == (len(user_ids), manifest["embedding_dim"])
    assert np.load(trained.file("item_features.npy")).shape == (
        len(item_ids),
        len(manifest["features"]["item"]),
    )
    assert np.load(trained.file("user_features.npy")).shape == (
        len(user_ids),
        len(manifest["features"]["user"]),
    )
    assert manifest["features"]["ranker"] == list(rf.RANKER_FEATURES)
    assert len(rf.RANKER_FEATURES) >= 16
    history = json.loads(trained.file("user_history.json").read_text())
    assert set(history) == set(user_ids)
    popular = json.loads(trained.file("popular.json").read_text())
    assert len(popular) == len(set(popular)) > 100 and set(popular) <= set(item_ids)


def test_sequence_neighbours_cover_the_catalogue(trained: ArtifactVersion) -> None:
    items = json.loads(trained.file("item_ids.json").read_text())
    neighbours = rf.ItemNeighbours.load(trained.file(rf.NEIGHBOURS_FILE), len(items))
    per_item = np.diff(neighbours.indptr)
    assert per_item.max() == trained.manifest["params"]["sequence_neighbours"] == 50
    assert (per_item > 0).mean() > 0.5 and (neighbours.weights > 0).all()
    rows = np.repeat(np.arange(len(items)), per_item)
    assert not (rows == neighbours.indices).any()  # an item is not its own neighbour


def test_sequence_neighbours_keep_the_strongest_and_zero_switches_them_off() -> None:
    # u0 rates a, b, c; u1 rates a, b; u2 rates c, d: within one position, a-b twice, b-c and c-d once.
    rows = [("u0", "a"), ("u0", "b"), ("u0", "c"), ("u1", "a"), ("u1", "b"), ("u2", "c"), ("u2", "d")]
    log = Log(
        np.array([u for u, _ in rows]),
        np.array([i for _, i in rows]),
        np.ones(len(rows), dtype=np.float32),
        np.arange(len(rows), dtype=np.float64),
    )
    items = ["a", "b", "c", "d", "e"]
    one = sequence_neighbours(log, items, window=1, keep=1)
    assert np.diff(one.indptr).tolist() == [1, 1, 1, 1, 0]
    assert [items[j] for j in one.indices] == ["b", "a", "d", "c"]  # b's strongest is a (2 pairs)
    off = sequence_neighbours(log, items, window=1, keep=0)
    assert off.indptr.tolist() == [0] * 6 and off.scores([0, 1], [2, 3]).tolist() == [0.0, 0.0]


def test_served_tag_counts_leave_out_tags_a_slice_may_not_know() -> None:
    """Before the reference time u1 rated a and u2 rated b; u1 rates b after it. Of the tags given before
    it, u2's on b (its own rating) and a non-rater's on a (metadata) count; u1's on b would reveal u1's
    later rating, and a tag given after the slice's last rating is not known yet."""
    full = Log(
        np.array(["u1", "u2", "u1"]),
        np.array(["a", "b", "b"]),
        np.full(3, 4.0, np.float32),
        np.array([1.0, 2.0, 10.0]),
    )
    fit = Log(full.users[:2], full.items[:2], full.ratings[:2], full.timestamps[:2])
    tags = Tags(
        np.array(["u2", "u9", "u1", "u9"]),
        np.array(["b", "a", "b", "a"]),
        np.array(["heist"] * 4),
        np.array([1.5, 1.5, 1.5, 3.0]),
    )
    catalog = {i: Item(title=i, genres=("Drama",)) for i in "ab"}
    data = Dataset("tags", "0" * 64, {}, full, catalog, {}, tags)
    config = TrainConfig(data=Path("unused"), out=Path("unused"), embedding_dim=2, progress=False)
    snap = build_snapshot(data, fit, ["a", "b"], 5.0, config)
    counts = np.expm1(snap.item_features[:, rf.ITEM_FEATURES.index("item_log_tags")])
    assert counts == pytest.approx([1.0, 1.0])


def test_manifest_describes_data_split_and_metrics(trained: ArtifactVersion) -> None:
    manifest = trained.manifest
    data = manifest["data"]
    assert data["source"] == "ml-latest-small"
    assert "/" not in json.dumps(data["source"])
    assert re.fullmatch(r"[0-9a-f]{64}", data["fingerprint"])
    assert data["counts"]["interactions"] == 100836
    assert data["counts"]["train"] + data["counts"]["test"] == 100836
    assert data["split"]["strategy"] == "time"
    windows = data["split"]["label_windows"]
    assert all(w["start"] < w["end"] <= data["split"]["test_start"] for w in windows)
    assert sum(w["interactions"] for w in windows) == data["counts"]["ranker_label"]
    for stage in ("popularity", "retrieval", "ranking"):
        assert set(manifest["metrics"][stage]) == {"recall@10", "precision@10", "ndcg@10", "map@10"}
    assert manifest["params"]["embedding_dim"] == manifest["embedding_dim"]


def test_ranking_beats_retrieval_on_ndcg(trained: ArtifactVersion) -> None:
    metrics = trained.manifest["metrics"]
    assert metrics["ranking"]["ndcg@10"] > metrics["retrieval"]["ndcg@10"]


def test_trained_pipeline_beats_popularity_on_latest_small(trained: ArtifactVersion) -> None:
    metrics = trained.manifest["metrics"]
    for metric in ("ndcg@10", "map@10", "recall@10", "precision@10"):
        assert metrics["ranking"][metric] > metrics["popularity"][metric], metric


@pytest.fixture(scope="module")
def trained_leave_last(tmp_path_factory: pytest.TempPathFactory) -> ArtifactVersion:
    root = tmp_path_factory.mktemp("artifacts-leave-last")
    return train(TrainConfig(data=BUNDLED_DATA, out=root, protocol="leave-last", leave_n=5, progress=False))


def test_leave_last_evaluates_every_user_and_the_ranker_beats_retrieval(
    trained_leave_last: ArtifactVersion,
) -> None:
    """Each user's latest 5 interactions are the test slice, so every user with more is evaluated (the
    time split reaches 28 of latest-small's 610); the ranker learned on per-user label windows beats its
    own retrieval and popularity there (on global time windows it fell below retrieval)."""
    manifest = trained_leave_last.manifest
    users, counts = np.unique(load(BUNDLED_DATA).log.users, return_counts=True)
    evaluated = int((counts > 5).sum())
    assert manifest["data"]["split"]["strategy"] == "leave-last"
    assert manifest["data"]["split"]["leave_n"] == 5
    assert manifest["data"]["counts"]["test"] == 5 * evaluated
    # No global time window to report: each label window is every user's own latest 5 of what remains.
    windows = manifest["data"]["split"]["label_windows"]
    assert windows and all(w["interactions"] == 5 * w["users"] for w in windows)
    assert windows[0]["users"] == evaluated
    assert "test_start" not in manifest["data"]["split"]
    assert manifest["metrics"]["evaluation"]["users"] == evaluated == len(users)
    metrics = manifest["metrics"]
    for metric in ("ndcg@10", "map@10"):
        assert metrics["ranking"][metric] > metrics["retrieval"][metric], metric
        assert metrics["ranking"][metric] > metrics["popularity"][metric], metric


def test_leave_last_label_windows_come_after_each_users_own_history() -> None:
    rows = [(f"u{u}", f"i{(u * 7 + t) % 40}", float(1000 * u + t)) for u in range(6) for t in range(12)]
    rows.sort(key=lambda r: r[2])
    log = Log(
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.ones(len(rows), dtype=np.float32),
        np.array([r[2] for r in rows]),
    )
    config = TrainConfig(data=Path("x"), out=Path("y"), protocol="leave-last", leave_n=2, ranker_windows=3)
    windows = label_windows(log, config)
    assert len(windows) == 3
    remaining = 12
    for window in windows:
        remaining -= 2
        for user in {f"u{u}" for u in range(6)}:
            labels = window.label.timestamps[window.label.users == user]
            history = window.fit.timestamps[window.fit.users == user]
            assert len(labels) == 2 and len(history) == remaining
            assert labels.min() > history.max()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_config_from_flags(tmp_path: Path) -> None:
    config = config_from_args(
        parse(["--data", "x.csv", "--out", str(tmp_path), "--candidates", "200", "--seed", "7"])
    )
    assert (config.data, config.out, config.candidates, config.seed) == (Path("x.csv"), tmp_path, 200, 7)


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
    ("flags", "named"),
    [
        (["--test-fraction", "1.5"], "test_fraction=1.5"),
        (["--protocol", "random"], "protocol='random'"),
        (["--leave-n", "0"], "leave_n=0"),
        (["--sequence-neighbours", "-1"], "sequence_neighbours=-1"),
    ],
)
def test_main_rejects_bad_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    args = parse(["--data", str(tmp_path), "--out", str(tmp_path / "a"), *flags])
    assert main(args) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
