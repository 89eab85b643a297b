"""The one pipeline on small logs: protocols and label slices, settings, the ranker's ensemble, the
content vectors a slice may know, feature rows, determinism, and `recsys evaluate` end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from services.cli import main
from services.common.ranker import Ensemble
from services.common.ranker_features import ITEM_FEATURES, USER_FEATURES, ranker_features
from services.trainer import ranker
from services.trainer.data import BUNDLED_DATA, Dataset, Item, Log, Tags, load
from services.trainer.evaluation import evaluate
from services.trainer.pipeline import PipelineConfig, Progress, fit, fit_stage
from services.trainer.protocols import Protocol
from services.trainer.splits import stratified_folds
from services.trainer.stats import feature_rows
from services.trainer.universe import Universe
from tests.support import light_pipeline


def synthetic(n_users: int = 90, n_items: int = 60, seed: int = 0) -> Dataset:
    """Users of 3 taste clusters rate mostly their cluster's items (and a few popular ones), each over
    a few days of their own."""
    rng = np.random.default_rng(seed)
    users, items, stamps = [], [], []
    for u in range(n_users):
        cluster = u % 3
        liked = [i for i in range(n_items) if i % 3 == cluster]
        chosen = set(rng.choice(liked, size=12, replace=False).tolist()) | set(rng.choice(5, 2).tolist())
        start = rng.integers(0, 100) * 86400.0
        for i in chosen:
            users.append(f"u{u}")
            items.append(f"i{i}")
            stamps.append(start + rng.integers(0, 5 * 86400))
    ts = np.asarray(stamps, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    log = Log(
        np.asarray(users)[order],
        np.asarray(items)[order],
        np.full(len(users), 4.0, dtype=np.float32),
        ts[order],
        order.astype(np.int64),
    )
    genres = ("Action", "Drama", "Comedy")
    catalog = {f"i{i}": Item(title=f"m{i}", genres=(genres[i % 3],)) for i in range(n_items)}
    attrs = {
        f"u{u}": {"age": str(20 + u % 30), "gender": "MF"[u % 2], "occupation": "x"} for u in range(n_users)
    }
    return Dataset("synthetic", "0" * 64, {}, log, catalog, attrs)


def small(protocol: str = "stratified") -> PipelineConfig:
    return light_pipeline(
        f"protocol.name={protocol}",
        "protocol.folds=3",
        "protocol.repeats=1",
        "fusion.candidates=20",
        "ranker.min_data_in_leaf=5",
        "ranker.rounds=20",
    )


def rows(log: Log) -> set[tuple[str, str, float]]:
    return set(zip(log.users.tolist(), log.items.tolist(), log.timestamps.tolist(), strict=True))


def test_stratified_folds_cover_every_row_once_and_spread_each_item() -> None:
    log = synthetic().log
    folds = stratified_folds(log, 5, seed=7)
    assert folds.shape == (len(log),)
    assert set(folds.tolist()) == set(range(5))
    for item in set(log.items.tolist()):
        counts = np.bincount(folds[log.items == item], minlength=5)
        assert counts.max() - counts.min() <= 1  # each item's rows dealt evenly
    assert np.array_equal(folds, stratified_folds(log, 5, seed=7))
    assert not np.array_equal(folds, stratified_folds(log, 5, seed=8))
    with pytest.raises(ValueError):
        stratified_folds(log, 1)


def test_kfold_label_slices_partition_the_log_and_never_fit_on_their_labels() -> None:
    train = synthetic().log
    slices = list(Protocol(name="stratified", folds=4, repeats=2).label_slices(train, seed=3))
    assert len(slices) == 8 == Protocol(name="stratified", folds=4, repeats=2).slice_count()
    everything = rows(train)
    for repeat in (slices[:4], slices[4:]):
        labelled: list[tuple[str, str, float]] = []
        for fitting, label in repeat:
            assert rows(fitting).isdisjoint(
                rows(label)
            )  # the sources never see the rows they are labelled by
            assert rows(fitting) | rows(label) == everything
            labelled += list(rows(label))
        assert sorted(labelled) == sorted(everything)  # every row labels once per repeat
    assert [rows(label) for _, label in slices[:4]] != [rows(label) for _, label in slices[4:]]


def test_leave_last_label_windows_come_after_each_users_own_history() -> None:
    events = [(f"u{u}", f"i{(u * 7 + t) % 40}", float(1000 * u + t)) for u in range(6) for t in range(12)]
    events.sort(key=lambda r: r[2])
    log = Log(
        np.array([r[0] for r in events]),
        np.array([r[1] for r in events]),
        np.ones(len(events), dtype=np.float32),
        np.array([r[2] for r in events]),
    )
    windows = list(Protocol(name="leave-last", leave_n=2, windows=3).label_slices(log, seed=1))
    assert len(windows) == 3
    remaining = 12
    for fitting, label in windows:
        remaining -= 2
        for user in {f"u{u}" for u in range(6)}:
            labels = label.timestamps[label.users == user]
            history = fitting.timestamps[fitting.users == user]
            assert len(labels) == 2 and len(history) == remaining
            assert labels.min() > history.max()


def test_time_windows_are_consecutive_and_earlier_than_what_they_label() -> None:
    log = synthetic().log
    windows = list(Protocol(name="time", windows=3, label_fraction=0.1).label_slices(log, seed=0))
    assert len(windows) == 3
    for fitting, label in windows:
        assert fitting.timestamps.max() < label.timestamps.min()
        assert len(fitting) + len(label) <= len(log)


def test_settings_parse_by_name_and_name_a_bad_one() -> None:
    config = PipelineConfig()
    changed = (
        config.with_setting("ease.lam", "300")
        .with_setting("fusion.fused", "ease,als")
        .with_setting("ranker.seeds", "1")
        .with_setting("sources", "ease,als,popular")
        .with_setting("protocol.name", "stratified")
    )
    assert changed.params("ease").lam == 300.0 and changed.fusion.fused == ("ease", "als")
    assert changed.ranker.seeds == 1 and changed.sources == ("ease", "als", "popular")
    assert config.params("ease").lam == 700.0  # the original is untouched
    changed.check()
    assert changed.feature_names == ranker_features(("ease", "als", "popular"))
    json.dumps(changed.describe())  # the manifest's record of it is JSON
    for name, value, words in [
        ("ease.lamda", "1", "unknown setting 'ease.lamda'"),
        ("nosuch", "1", "unknown setting 'nosuch'"),
        ("ranker.rounds", "many", "ranker.rounds: 'many' is not a int"),
    ]:
        with pytest.raises(ValueError, match=words):
            config.with_setting(name, value)
    with pytest.raises(ValueError, match=r"fusion\.fused"):
        config.with_setting("sources", "als,popular").check()
    with pytest.raises(ValueError, match="sources: unknown"):
        config.with_setting("sources", "als,bm25").check()


def test_the_ensemble_sums_its_models_per_list_z_scores() -> None:
    """One model ranks by its raw scores; several count alike whatever their scale, list by list."""
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(6)]
    features = rng.normal(size=(200, len(names))).astype(np.float32)
    labels = (features[:, 0] + rng.normal(size=200) > 0.5).astype(np.float64)
    groups = ranker.Groups(features, labels, [4] * 50)
    ensemble = ranker.train(groups, names, ranker.RankerParams(rounds=5, min_data_in_leaf=5, seeds=2), 3, 1)
    assert len(ensemble.models) == 2
    raw = [m.predict(features).reshape(-1, 4) for m in ensemble.models]
    z = sum((r - r.mean(axis=1, keepdims=True)) / r.std(axis=1, keepdims=True) for r in raw)
    lists = ensemble.score_lists(features, [4] * 50)
    np.testing.assert_allclose(np.concatenate(lists), z.reshape(-1), atol=1e-6)
    np.testing.assert_array_equal(lists[7], ensemble.score(features[28:32]))  # a list scores as it is, alone
    single = Ensemble(ensemble.models[:1])
    np.testing.assert_array_equal(np.argsort(-single.score(features[:4])), np.argsort(-raw[0][0]))


def test_content_vectors_count_only_tags_a_fitted_slice_may_know() -> None:
    """u1's only item, a, shares the tag "heist" with c through a tagger who rated neither (metadata).
    The same tag on d comes with u1's held-out rating of d, and on e after the last fitted interaction:
    neither may count, so d and e score as their genres alone, like b."""

    def log(events: list[tuple[str, str, float]]) -> Log:
        users, items, stamps = zip(*events, strict=True)
        return Log(np.array(users), np.array(items), np.full(len(events), 4.0, np.float32), np.array(stamps))

    fitted_rows = [("u1", "a", 1.0), ("u2", "a", 2.0), ("u2", "b", 3.0)] + [("u3", i, 4.0) for i in "bcde"]
    fitting, full = log(fitted_rows), log([*fitted_rows, ("u1", "d", 5.0)])
    tags = Tags(
        np.array(["u2", "u9", "u1", "u9"]),
        np.array(["a", "c", "d", "e"]),
        np.array(["heist"] * 4),
        np.array([1.0, 1.0, 2.0, 9.0]),
    )
    genre = {"a": ("Action",)} | {i: ("Drama",) for i in "bcde"}
    data = Dataset(
        "tags", "0" * 64, {}, full, {i: Item(title=i, genres=g) for i, g in genre.items()}, {}, tags
    )
    universe = Universe.build(data, fitting)
    stage = fit_stage(
        universe,
        fitting,
        small().with_setting("sources", "content,popular").with_setting("fusion.fused", "content"),
        0,
        Progress(False),
    )
    scores = stage.sources["content"].scores(stage.histories["u1"]).at(np.arange(universe.n_items))
    score = dict(zip(universe.item_ids, scores.tolist(), strict=True))
    assert score["c"] == pytest.approx(0.5)  # half of a's and of c's vector is the shared tag
    assert score["b"] == score["d"] == score["e"] == 0.0


def test_the_content_space_makes_each_trained_items_vector_from_its_genres_and_tags() -> None:
    """What serving makes of an item's genres and tags (services.common.content_space, for an item
    upserted after training) is the row the trainer's matrix code made for it, on the bundled data's
    real genres and tags; a tag the fit did not keep adds nothing."""
    data = load(BUNDLED_DATA)
    fitting = data.log.take(data.log.timestamps <= np.quantile(data.log.timestamps, 0.8))
    universe = Universe.build(data, fitting)
    fitted = universe.fit_data(fitting, seed=0, threads=1)
    space = fitted.content_space
    assert len(space.tags) > 50 and space.dim == fitted.content.shape[1]
    known = universe.tags.known_to(fitting, universe.rated)
    given: dict[str, list[str]] = {}
    for item, text in zip(known.items.tolist(), known.texts.tolist(), strict=True):
        given.setdefault(item, []).append(text.upper())  # as a client may send them
    genres = {i: data.catalog[i].genres if i in data.catalog else () for i in universe.item_ids}
    made = np.stack([space.vector(genres[i], given.get(i, [])) for i in universe.item_ids])
    np.testing.assert_allclose(made, fitted.content, atol=1e-6)
    tagged = [i for i in universe.item_ids if set(map(str.lower, given.get(i, []))) & set(space.tags)]
    assert len(tagged) > 100  # the tag part is exercised, not only the genres
    np.testing.assert_array_equal(space.vector(["Drama"], ["no such tag"]), space.vector(["Drama"], []))


def test_feature_rows_of_a_hand_made_slice() -> None:
    day = 86_400.0
    log = Log(
        np.array(["u1", "u1", "u2"]),
        np.array(["a", "b", "a"]),
        np.array([4.0, 2.0, 5.0], np.float32),
        np.array([0.0, 2 * day, 4 * day]),
    )
    data = Dataset(
        "rows",
        "0" * 64,
        {},
        log,
        {"a": Item("A (1999)", ("Drama",)), "b": Item("B", ())},
        {"u1": {"age": "30"}},
    )
    universe = Universe.build(data, log)
    items, users = feature_rows(universe, log)
    item = dict(zip(ITEM_FEATURES, items[universe.item_row["a"]].tolist(), strict=True))
    user = dict(zip(USER_FEATURES, users[universe.user_row["u1"]].tolist(), strict=True))
    assert item["item_mean_rating"] == 4.5 and item["item_year"] == 1999.0 and item["item_n_genres"] == 1.0
    assert item["item_days_since_first"] == 4.0 and item["item_days_since_last"] == 0.0
    assert item["item_rater_age"] == 30.0  # u2's age is unknown
    assert user["user_mean_rating"] == 3.0 and user["user_days_active"] == 2.0
    assert user["user_days_since_last"] == 2.0 and user["user_age"] == 30.0
    assert np.isnan(users[universe.user_row["u2"], USER_FEATURES.index("user_age")])


def test_a_fit_is_reproducible_and_beats_popularity(tmp_path: Path) -> None:
    data = synthetic()
    config = small()
    train, test = config.protocol.holdout(data.log, seed=1)
    known = data.known_from(train)
    first, second = (fit(known, train, config) for _ in range(2))
    users = sorted(first.stage.histories)[:30]
    a, b = first.rank(users, Progress(False)), second.rank(users, Progress(False))
    for user in users:
        np.testing.assert_array_equal(a[user][0].rows, b[user][0].rows)
        np.testing.assert_array_equal(a[user][1], b[user][1])
    metrics = evaluate(first, test)["accuracy"]
    assert metrics["pipeline"]["ndcg@10"] > metrics["popular"]["ndcg@10"]
    assert first.info["groups"] > 0 and first.info["label_slices"] == 3


def test_an_item_only_held_out_is_not_in_the_catalogue() -> None:
    """Under a random split an item with one rating goes wholly to test: the trainer must not see it in
    the catalogue either, or its mere presence without interactions would give it away."""
    base = synthetic()
    log = base.log
    lonely = Log(
        np.concatenate([log.users, ["u0"]]),
        np.concatenate([log.items, ["lonely"]]),
        np.concatenate([log.ratings, [4.0]]).astype(np.float32),
        np.concatenate([log.timestamps, [log.timestamps[-1] + 1]]),
        np.concatenate([log.positions if log.positions is not None else np.arange(len(log)), [len(log)]]),
    )
    data = dataclasses.replace(
        base, log=lonely, catalog={**base.catalog, "lonely": Item("Lonely", ("Drama",))}
    )
    train, test = Protocol(name="stratified").holdout(data.log, seed=1)
    assert "lonely" in test.items.tolist()
    known = data.known_from(train)
    assert set(known.catalog) == set(train.items.tolist()) < set(data.catalog)
    assert set(Universe.build(known, train).item_ids) == set(train.items.tolist())


def synthetic_csv(path: Path) -> Path:
    """`synthetic()`'s log as the CSV `recsys evaluate` reads."""
    log = synthetic().log
    path.write_text(
        "user,item,rating,timestamp\n"
        + "".join(
            f"{u},{i},{r},{int(t)}\n"
            for u, i, r, t in zip(log.users, log.items, log.ratings, log.timestamps, strict=True)
        )
    )
    return path


def evaluate_settings() -> list[str]:
    return [arg for pair in dataclasses.astuple(Settings()) for arg in ("--set", pair)]


def test_recsys_evaluate_writes_report_and_plots(tmp_path: Path) -> None:
    data = synthetic_csv(tmp_path / "log.csv")
    out = tmp_path / "report"
    settings = evaluate_settings()
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--seeds", "1", *settings]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"pipeline", "retrieval", "ease", "popular"} <= set(report["summary"]["accuracy"])
    assert (out / "report.md").read_text().startswith("# Offline evaluation: log.csv")
    for png in (
        "metric_vs_k.png",
        "recall_funnel.png",
        "beyond_accuracy.png",
        "comparison.png",
        "feature_importance.png",
    ):
        assert (out / png).stat().st_size > 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    folds: str = "protocol.folds=3"
    repeats: str = "protocol.repeats=1"
    rounds: str = "ranker.rounds=10"
    leaf: str = "ranker.min_data_in_leaf=5"
    seeds: str = "ranker.seeds=1"
    factors: str = "als.factors=8"
