"""Chaos under open-loop load (bench/chaos.py's scenario, shorter): a replica of each backend SIGKILLed
(ranking back slowed), Redis SIGKILLed and restarted, a features replica killed holding a spool, a
corrupt CURRENT. Every valid Recommend is answered, no Feedback is refused, and the log read back holds
every accepted event once: feedback and exposures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run_chaos
from services.common.artifacts import ArtifactVersion

pytestmark = pytest.mark.timeout(600)


def test_chaos_under_load_loses_and_refuses_nothing(trained: ArtifactVersion, tmp_path: Path) -> None:
    r = run_chaos(trained.path, tmp_path, seconds=22, rps=12, feedback_rps=6)
    print(r)
    code, tail = r.refused_start
    assert code != 0 and "cannot reach Redis" in tail, tail
    assert r.failures == []
    assert r.recommend_answered == r.recommend_sent == 264
    assert r.feedback_accepted == r.feedback_sent == 132
    assert (r.feedback_lost, r.feedback_duplicated) == (0, 0), "feedback lost or duplicated"
    assert r.exposures_expected == r.recommend_answered  # one experiment: an exposure per response
    assert (r.exposures_lost, r.exposures_duplicated) == (0, 0), "exposures lost or duplicated"
    assert r.versions_served == ["v1"], "the corrupt version was served"
