"""The quality gate's rule on per-user paired metrics (services/trainer/gate.decide): refused only when
the new version is confidently worse than the serving one by more than the tolerance."""

from __future__ import annotations

import numpy as np

from services.trainer.gate import decide


def test_a_noisy_difference_on_a_small_slice_passes() -> None:
    rng = np.random.default_rng(0)
    serving = rng.binomial(1, 0.3, 60).astype(np.float64)  # one held-out item per user: 0/1 hits
    new = serving.copy()
    new[np.flatnonzero(serving)[:3]] = 0.0  # three users lose their hit: worse, within chance
    passed, difference = decide(new, serving, tolerance=0.005)
    low, high = difference.ci()
    assert difference.value < -0.005 and low < -0.005 < high and passed


def test_a_confidently_worse_version_is_refused() -> None:
    rng = np.random.default_rng(1)
    serving = rng.uniform(0.3, 1.0, 200)
    new = serving - rng.uniform(0.05, 0.15, 200)
    passed, difference = decide(new, serving, tolerance=0.005)
    assert not passed and difference.ci()[1] < -0.005


def test_a_better_or_equal_version_passes() -> None:
    serving = np.linspace(0.0, 1.0, 50)
    assert decide(serving + 0.01, serving, 0.0)[0]
    assert decide(serving.copy(), serving, 0.0)[0]


def test_one_user_compares_the_point_estimates() -> None:
    assert decide(np.array([0.5]), np.array([0.504]), 0.005)[0]
    assert not decide(np.array([0.5]), np.array([0.6]), 0.005)[0]
