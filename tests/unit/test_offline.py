"""`recsys evaluate` end to end on a small synthetic log (fast; MovieLens 100k is never needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.cli import main
from services.trainer.data import Dataset, Item, Log, Tags
from services.trainer.offline import (
    OfflineConfig,
    Ranker,
    RankerData,
    Timer,
    feature_names,
    fit_sources,
    make_context,
    ranker_slices,
    run,
    train_ranker,
)
from services.trainer.sources import (
    Interactions,
    build_index,
    content_vectors,
    ease,
    index_recall,
    rp3beta_weights,
    sequence_ease_weights,
    sequence_pairs,
    sequence_weights,
    tag_vectors,
    top_n,
)
from services.trainer.splits import stratified_folds


def synthetic(n_users: int = 80, n_items: int = 60, seed: int = 0) -> Dataset:
    """Users of 3 taste clusters rate mostly their cluster's items (and a few popular ones)."""
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


SMALL = OfflineConfig(candidates=30, bpr_iterations=20, als_iterations=5, max_rounds=50, min_data_in_leaf=5)


def test_offline_run_reports_every_stage_and_beats_popularity() -> None:
    messages: list[str] = []
    result = run(synthetic(), SMALL, [1, 2], progress=messages.append)
    slices = SMALL.ranker_folds * SMALL.ranker_fold_repeats
    for seed in (1, 2):  # stage A shows each slice: on latest-small it runs for minutes
        shown = [m.split(": ")[1] for m in messages if m.startswith(f"seed {seed}: stage A")]
        assert shown == [f"stage A slice {k}/{slices}" for k in range(1, slices + 1)] + ["stage A ranker"]
    summary = result["summary"]["accuracy"]
    assert set(summary) >= {"pipeline", "retrieval", "ease", "als", "bpr", "pop", "cooc", "content"}
    assert set(summary["pipeline"]) == {"recall@10", "precision@10", "ndcg@10", "map@10"}
    assert summary["pipeline"]["ndcg@10"]["mean"] > summary["pop"]["ndcg@10"]["mean"]
    run0 = result["per_seed"][0]
    assert run0["sizes"]["candidates_per_user"] == 30
    assert set(run0["mmr"]) == {"1.0", "0.9", "0.8", "0.7", "0.5"}
    assert run0["faiss"]["als"]["chosen"] == "flat"
    assert len(run0["feature_importance"]) >= 16
    assert {"stage_a_sources", "stage_a_ranker", "stage_b_sources", "evaluate"} <= set(run0["seconds"])


def test_recsys_evaluate_writes_report_and_plots(tmp_path: Path) -> None:
    data = synthetic()
    udata = tmp_path / "data" / "u.data"
    udata.parent.mkdir()
    rows = sorted(range(len(data.log)), key=lambda r: int(data.log.positions[r]))  # type: ignore[index]
    udata.write_text(
        "".join(
            f"{data.log.users[r][1:]}\t{data.log.items[r][1:]}\t4\t{int(data.log.timestamps[r])}\n"
            for r in rows
        )
    )
    out = tmp_path / "report"
    assert (
        main(
            ["evaluate", "--data", str(udata.parent), "--out", str(out), "--seeds", "3", "--candidates", "30"]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["name"] == "stratified"
    assert "BiVAE (published)" in (out / "report.md").read_text()
    pytest.importorskip("matplotlib")
    for name in (
        "metric_vs_k.png",
        "recall_funnel.png",
        "beyond_accuracy.png",
        "comparison.png",
        "feature_importance.png",
    ):
        assert (out / name).stat().st_size > 0


def test_recsys_evaluate_help_states_the_benchmark_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    # the CLI leaves these flags unset so OfflineConfig decides; its help text must not drift from it
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {OfflineConfig.candidates})" in text
    assert f"(default {OfflineConfig.objective})" in text


def test_exact_index_below_the_threshold_and_hnsw_recall_is_measured() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    flat, kind = build_index(items)
    assert kind == "flat"
    assert index_recall(flat, items, queries, 50) == pytest.approx(1.0)
    _, kind = build_index(items, threshold=100)
    assert kind == "hnsw"


def test_top_n_removes_training_items_and_ease_scores_cluster_items() -> None:
    data = synthetic()
    users = sorted(set(data.log.users.tolist()))
    item_ids = sorted(set(data.log.items.tolist()))
    x = Interactions.build(data.log, users, item_ids)
    top = top_n(ease(x, 10.0), x.binary, 5)
    seen = x.binary.toarray() > 0
    assert not seen[np.arange(len(users))[:, None], top].any()


def test_content_links_items_by_tags_a_fitted_model_may_know() -> None:
    """u1's only item, a, shares the tag "heist" with c through a tagger who rated neither (metadata).
    The same tag on d comes with u1's held-out rating of d, and on e after the last fitted interaction:
    neither may count, so d and e score as their genres alone, like b."""

    def log(rows: list[tuple[str, str, float]]) -> Log:
        users, items, stamps = zip(*rows, strict=True)
        return Log(np.array(users), np.array(items), np.full(len(rows), 4.0, np.float32), np.array(stamps))

    fitted_rows = [("u1", "a", 1.0), ("u2", "a", 2.0), ("u2", "b", 3.0)] + [("u3", i, 4.0) for i in "bcde"]
    fit, full = log(fitted_rows), log([*fitted_rows, ("u1", "d", 5.0)])
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
    ctx = make_context(data, fit)
    content = fit_sources(ctx, fit, SMALL, seed=0).scores["content"][ctx.user_ids.index("u1")]
    score = dict(zip(ctx.item_ids, content.tolist(), strict=True))
    assert score["c"] == pytest.approx(0.5)  # half of a's and of c's vector is the shared tag
    assert score["b"] == score["d"] == score["e"] == 0.0
    no_tags = tag_vectors(ctx.item_ids, Tags.empty())
    assert np.array_equal(content_vectors(ctx.genres, no_tags), ctx.genres)  # untagged data scores as before


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


def test_kfold_ranker_slices_partition_train_and_never_fit_on_their_labels() -> None:
    train = synthetic().log
    config = OfflineConfig(ranker_folds=4, ranker_fold_repeats=2)
    slices = list(ranker_slices(train, config, seed=3, timer=Timer()))
    assert len(slices) == 8

    def rows(log: Log) -> set[tuple[str, str, float]]:
        return set(zip(log.users.tolist(), log.items.tolist(), log.timestamps.tolist(), strict=True))

    everything = rows(train)
    for repeat in (slices[:4], slices[4:]):
        labelled: list[tuple[str, str, float]] = []
        for fit, label in repeat:
            assert rows(fit).isdisjoint(rows(label))  # the sources never see the rows they are labelled by
            assert rows(fit) | rows(label) == everything
            assert len(fit) + len(label) == len(train)
            labelled += list(rows(label))
        assert sorted(labelled) == sorted(everything)  # every train row labels once per repeat
    # the repeat deals the rows into other folds
    assert [rows(label) for _, label in slices[:4]] != [rows(label) for _, label in slices[4:]]
    inner = list(ranker_slices(train, OfflineConfig(ranker_folds=0, inner_folds=2), seed=3, timer=Timer()))
    assert len(inner) == 2


def test_rp3beta_weights_match_a_hand_computed_walk() -> None:
    # users: a = {i0, i1}, b = {i0, i2}; item degrees 2, 1, 1
    log = Log(
        np.array(["a", "a", "b", "b"]),
        np.array(["i0", "i1", "i0", "i2"]),
        np.full(4, 4.0, dtype=np.float32),
        np.arange(4, dtype=np.float64),
        np.arange(4, dtype=np.int64),
    )
    x = Interactions.build(log, ["a", "b"], ["i0", "i1", "i2"])
    w = rp3beta_weights(x, alpha=1.0, beta=0.0)
    # W[i, j] = sum_u P(u | i) P(j | u): from i1 the walk goes to a, then to i0 or i1 with 1/2 each
    assert w[1, 0] == pytest.approx(0.5)
    assert w[0, 1] == pytest.approx(0.25) and w[0, 2] == pytest.approx(0.25)
    assert np.allclose(np.diag(w), 0.0)
    penalised = rp3beta_weights(x, alpha=1.0, beta=1.0)
    assert penalised[1, 0] == pytest.approx(0.5 / 2.0)  # divided by popularity(i0)^beta
    assert penalised[2, 1] == pytest.approx(0.0)


def test_sequence_pairs_count_neighbours_in_each_users_time_order() -> None:
    # user a rates i0, i1, i2, i3 in that order (rows deliberately not in time order);
    # user b rates i3 then i0; item i4 is unknown to the interaction matrix and is skipped
    log = Log(
        np.array(["a", "b", "a", "a", "b", "a", "a"]),
        np.array(["i2", "i3", "i0", "i1", "i0", "i3", "i4"]),
        np.full(7, 4.0, dtype=np.float32),
        np.array([30.0, 5.0, 10.0, 20.0, 6.0, 40.0, 35.0]),
        np.arange(7, dtype=np.int64),
    )
    x = Interactions.build(log, ["a", "b"], ["i0", "i1", "i2", "i3"])
    one = sequence_pairs(x, log, window=1).toarray()
    # a: (i0,i1) (i1,i2) (i2,i3); b: (i3,i0); symmetric, one per pair
    expected = np.zeros((4, 4))
    for i, j in ((0, 1), (1, 2), (2, 3), (3, 0)):
        expected[i, j] = expected[j, i] = 1
    assert np.array_equal(one, expected)
    two = sequence_pairs(x, log, window=2).toarray()
    assert two[0, 2] == 1 and two[1, 3] == 1 and two[0, 3] == 1  # b's pair counts once, a's i0-i3 is 3 apart
    assert np.allclose(np.diag(two), 0.0)
    # normalised by count(i)^alpha * count(j)^(1 - alpha), counts + 1: i0 and i3 have 2 ratings, i1 one
    w = sequence_weights(x, log, window=1, alpha=0.7).toarray()
    assert w[0, 1] == pytest.approx(1 / (3**0.7 * 2**0.3), rel=1e-5)
    b = sequence_ease_weights(x, log, window=1, lam=10.0)
    assert b.shape == (4, 4) and np.allclose(np.diag(b), 0.0)
    assert b[0, 1] > 0 and b[0, 1] > b[0, 2]  # neighbours in time weigh more than items two apart


def test_fixed_rounds_ranker_and_list_normalised_features() -> None:
    config = OfflineConfig(
        candidates=30,
        bpr_iterations=20,
        als_iterations=5,
        max_rounds=20,
        min_data_in_leaf=5,
        early_stopping_rounds=0,
    )
    names = feature_names(config.overlap_units)
    assert {"rp3_log_rank", "rp3_list_z", "ease_list_z", "seq_list_z", "seqease_list_z"} <= set(names)
    result = run(synthetic(), config, [1])
    run0 = result["per_seed"][0]
    assert run0["ranker"]["best_iteration"] == [20, 20, 20]  # ranker_seeds = 3 by default
    assert {"rp3", "seq", "seqease"} <= set(run0["accuracy"])


def test_ranker_sums_its_models_per_list_z_scores() -> None:
    """One model ranks by its raw scores; several count alike whatever their scale, list by list."""
    rng = np.random.default_rng(0)
    per_user, features = 4, rng.normal(size=(200, len(feature_names()))).astype(np.float32)
    labels = (features[:, 0] + rng.normal(size=200) > 0.5).astype(np.float64)
    data = RankerData(features, labels, per_user, {})
    config = OfflineConfig(max_rounds=5, min_data_in_leaf=5, ranker_seeds=2)
    ranker, info = train_ranker(data, config, seed=3, timer=Timer())
    assert info["models"] == 2 and len(ranker.boosters) == 2
    raw = [b.predict(features).reshape(-1, per_user) for b in ranker.boosters]
    z = sum((r - r.mean(axis=1, keepdims=True)) / r.std(axis=1, keepdims=True) for r in raw)
    np.testing.assert_allclose(ranker.predict(features, per_user, threads=1), z.reshape(-1), atol=1e-6)
    single = Ranker(ranker.boosters[:1])
    np.testing.assert_array_equal(
        np.argsort(-single.predict(features, per_user, 1).reshape(-1, per_user), axis=1),
        np.argsort(-raw[0], axis=1),
    )
    with pytest.raises(ValueError, match="ranker_seeds must be >= 1, got 0"):
        OfflineConfig(ranker_seeds=0)


def test_sources_are_reproducible_for_a_seed() -> None:
    """Every source, BPR included (its parallel updates race when run on several threads), gives the
    same scores twice for one seed, so a rerun of the benchmark reproduces its numbers."""
    data = synthetic(n_users=600, n_items=300)
    ctx = make_context(data, data.log)
    config = OfflineConfig(bpr_iterations=50, als_iterations=5)
    first, second = (fit_sources(ctx, data.log, config, seed=7) for _ in range(2))
    for name, scores in first.scores.items():
        np.testing.assert_array_equal(scores, second.scores[name], err_msg=name)
