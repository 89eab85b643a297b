"""What the notebooks call beyond the pipeline itself: several rankers on one shared fit, a live
history's recommendations, the held-out candidates scored once for many rankers, permutation
importance by feature group, per-user metrics for paired comparisons, PSI per feature between two
matrices, and the A/B report's figure drawn without pyplot."""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
import pytest

from services.common.drift import histogram, psi, psi_by_feature, references
from services.common.ranker_features import feature_groups, ranker_features
from services.common.sources.base import EMPTY_ROWS, History
from services.experiment import analysis, simulate
from services.trainer.data import Dataset, Log
from services.trainer.evaluation import (
    held_out,
    permutation_importance,
    ranked_lists,
    rankings,
)
from services.trainer.metrics import mean_metrics, per_user_metrics
from services.trainer.pipeline import Fitted, PipelineConfig, Progress, fit, fit_rankers
from tests.unit.test_pipeline import small, synthetic


@functools.cache
def split() -> tuple[Dataset, Log, Log]:
    data = synthetic()
    config = small()
    train, test = config.protocol.holdout(data.log, seed=1)
    return data.known_from(train), train, test


@functools.cache
def shared() -> tuple[list[Fitted], PipelineConfig, PipelineConfig]:
    known, train, _ = split()
    a = small()
    b = a.with_settings(["ranker.rounds=7", "ranker.seeds=1"])
    return fit_rankers(known, train, [a, b]), a, b


def test_rankers_fitted_on_one_shared_fit_score_as_their_own_fits() -> None:
    known, train, _ = split()
    (fa, fb), a, b = shared()
    users = sorted(fa.stage.histories)[:15]
    for fitted, config in ((fa, a), (fb, b)):
        alone = fit(known, train, config)
        assert fitted.config == config and fitted.info["ranker_seconds"] >= 0
        for user in users:
            mine, theirs = (
                fitted.rank([user], Progress(False))[user],
                alone.rank([user], Progress(False))[user],
            )
            assert np.array_equal(mine[0].rows, theirs[0].rows)
            assert np.allclose(mine[1], theirs[1])
    assert fa.stage is fb.stage
    first, second = (f.rank(users[:1], Progress(False))[users[0]][1] for f in (fa, fb))
    assert not np.allclose(first, second)


def test_configs_that_differ_beyond_the_ranker_are_refused() -> None:
    known, train, _ = split()
    with pytest.raises(ValueError, match="more than their ranker"):
        fit_rankers(known, train, [small(), small().with_settings(["fusion.candidates=10"])])


def test_a_known_users_own_history_is_recommended_as_ranked_and_a_new_user_gets_k_items() -> None:
    (fitted, _), _, _ = shared()
    for user in sorted(fitted.stage.histories)[:10]:
        cand, scores = fitted.rank([user], Progress(False))[user]
        expected = fitted.universe.ids(cand.rows[np.argsort(-scores, kind="stable")[:5]])
        history = fitted.universe.ids(fitted.stage.histories[user].items)
        items, top = fitted.recommend([*history, "no-such-item"], k=5, user=user)
        assert items == expected and np.all(np.diff(top) <= 0)
        assert not set(items) & set(history)
    # no history: popular order, as the ranking service serves a newcomer (not the ranker's)
    cold, _ = fitted.recommend([], k=5)
    popular, _ = fitted.stage.sources["popular"].scores(History.of([])).top(5, EMPTY_ROWS)
    assert cold == fitted.universe.ids(popular)


def test_held_out_lists_are_the_pipelines_and_permutation_importance_finds_what_the_ranker_uses() -> None:
    (fitted, _), config, _ = shared()
    _, _, test = split()
    held = held_out(fitted, test)
    pipeline = rankings(fitted, test, Progress(False), k=10).lists["pipeline"]
    assert ranked_lists(fitted, held, 10) == pipeline and len(pipeline) == len(held.users) > 10
    part = held.sample(9)
    assert len(part.users) == 9 and set(part.users) < set(held.users)
    assert ranked_lists(fitted, part, 10) == {u: pipeline[u] for u in part.users}
    groups = feature_groups(config.sources)
    assert [c for cols in groups.values() for c in cols] == ranker_features(config.sources)
    importance = permutation_importance(fitted, held, groups, "ndcg@10", seed=3)
    assert set(importance) == set(groups)
    # no ranker can use a constant column: the synthetic log's ratings are all 4.0
    constant = {"rating": ["item_std_rating"]}
    assert permutation_importance(fitted, held, constant, "ndcg@10")["rating"] == 0.0
    assert max(importance.values()) > 0.01


def test_per_user_metrics_average_to_mean_metrics() -> None:
    lists = {"a": ["x", "y", "z"], "b": ["y", "x"], "c": ["q"]}
    relevant = {"a": {"y"}, "b": {"y", "z"}, "c": set()}
    users, values = per_user_metrics(lists, relevant, 2)
    assert users == ["a", "b"]
    assert values["recall@2"].tolist() == [1.0, 0.5]
    assert values["ndcg@2"][0] == pytest.approx(1 / np.log2(3))
    assert {k: float(np.mean(v)) for k, v in values.items()} == mean_metrics(lists, relevant, 2)


def test_psi_by_feature_bins_on_the_reference_and_sees_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5000, 2))
    live = np.column_stack([rng.normal(size=5000), rng.normal(1.0, 1.0, size=5000)])
    out = psi_by_feature(["same", "shifted"], ref, live)
    assert out["same"] < 0.02 < 0.2 < out["shifted"]
    reference = references(["shifted"], ref[:, 1:])["shifted"]
    assert out["shifted"] == psi(reference, histogram(reference.edges, live[:, 1]))
    with pytest.raises(ValueError):
        psi_by_feature(["one"], ref, live)


def test_the_ab_figure_is_drawn_without_touching_the_backend() -> None:
    backend = matplotlib.get_backend()
    report = analysis.report_from_events(
        list(simulate.simulate_events(simulate.SimConfig(users=400, lift=0.1))), "sim"
    )
    fig = analysis.figure(report)
    assert len(fig.axes) == 4 and matplotlib.get_backend() == backend
