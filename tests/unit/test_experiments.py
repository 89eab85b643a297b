"""Assignment: config validation, uniformity, stickiness, layers, ramps, holdout, QA, hot reload."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import chi2_contingency, chisquare

from services.common.config import ConfigError
from services.gateway import experiments as ex
from tests.support import REPO


def exp(arms: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": extra.pop("id", "e1"), "salt": extra.pop("salt", "s1"), "arms": arms, **extra}


def config(*experiments: dict[str, Any], **top: Any) -> ex.Config:
    return ex.parse({"experiments": list(experiments), **top}, "test.yaml")


def two_arms(weight_b: float = 50, **extra: Any) -> dict[str, Any]:
    return exp(
        [
            {"name": "a", "weight": 100 - weight_b},
            {"name": "b", "weight": weight_b, "overrides": {"candidates": 200, "ranking": False}},
        ],
        **extra,
    )


def arm_of(cfg: ex.Config, user: str, experiment: str = "e1") -> str | None:
    return next((a.arm.name for a in ex.assign(cfg, user) if a.experiment == experiment), None)


def test_default_file_loads() -> None:
    loaded = ex.load(ex.DEFAULT_FILE)
    assert [a.name for a in loaded.experiments[0].arms] == ["control", "candidates_200"]


def test_hash_is_64_bit_and_stable() -> None:
    # Pinned values: a change of the hash would reshuffle every running experiment.
    assert ex.hash64("s", "u") == ex.hash64("s", "u") < 2**64
    assert ex.bucket("candidates-2026-11", "42") == ex.hash64("candidates-2026-11", "42") % 10_000
    assert ex.hash64("s", "u") != ex.hash64("t", "u")


def test_buckets_are_uniform_over_1m_ids() -> None:
    n = 1_000_000
    buckets = np.fromiter((ex.bucket("uniformity", str(i)) for i in range(n)), dtype=np.int64, count=n)
    counts = np.bincount(buckets, minlength=ex.BUCKETS)
    assert chisquare(counts).pvalue > 0.001
    # And the arms of a 50/50 experiment split them evenly.
    cfg = config(two_arms(salt="uniformity"))
    tre = np.fromiter((cfg.experiments[0].arm_of_bucket(int(b)).name == "b" for b in buckets[:200_000]), bool)
    assert chisquare([int(tre.sum()), int((~tre).sum())]).pvalue > 0.001


def test_assignment_is_sticky_across_processes() -> None:
    """A fresh interpreter (another replica, or a restart) with a different PYTHONHASHSEED agrees."""
    users = [f"user-{i}" for i in range(500)]
    code = (
        "import sys; from services.gateway import experiments as ex; "
        "c = ex.load(ex.DEFAULT_FILE); "
        "print(','.join(ex.assign(c, f'user-{i}')[0].arm.name for i in range(500)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    cfg = ex.load(ex.DEFAULT_FILE)
    assert outputs == {",".join(ex.assign(cfg, u)[0].arm.name for u in users)}


def test_layers_are_independent_and_exclusive_inside() -> None:
    cfg = config(
        two_arms(id="x", salt="sx", layer="L1"),
        exp([{"name": "c", "weight": 50}, {"name": "d", "weight": 50}], id="y", salt="sy", layer="L2"),
        exp([{"name": "c", "weight": 100}], id="z1", salt="z1", layer="L3", traffic=0.3),
        exp([{"name": "c", "weight": 100}], id="z2", salt="z2", layer="L3", traffic=0.5),
    )
    users = [f"u{i}" for i in range(40_000)]
    rows = [{a.experiment: a.arm.name for a in ex.assign(cfg, u)} for u in users]
    table = Counter((r["x"], r["y"]) for r in rows)
    contingency = [[table["a", "c"], table["a", "d"]], [table["b", "c"], table["b", "d"]]]
    assert chi2_contingency(contingency).pvalue > 0.001
    # Inside layer L3: never both, and each gets its share of the layer.
    assert not any("z1" in r and "z2" in r for r in rows)
    z1, z2 = sum("z1" in r for r in rows) / len(rows), sum("z2" in r for r in rows) / len(rows)
    assert abs(z1 - 0.3) < 0.01 and abs(z2 - 0.5) < 0.01
    # Arms inside an experiment are independent of its position in the layer.
    within = Counter(r["x"] for r in rows)
    assert chisquare([within["a"], within["b"]]).pvalue > 0.001


def test_ramp_up_only_moves_users_from_control() -> None:
    users = [f"u{i}" for i in range(30_000)]

    def arms(w1: float, w2: float) -> list[str | None]:
        cfg = config(
            exp(
                [
                    {"name": "control", "weight": 100 - w1 - w2},
                    {"name": "t1", "weight": w1},
                    {"name": "t2", "weight": w2},
                ]
            )
        )
        return [arm_of(cfg, u) for u in users]

    steps = [arms(1, 5), arms(10, 5), arms(30, 5), arms(30, 20), arms(49.5, 49.5)]
    for before, after in itertools.pairwise(steps):
        for b, a in zip(before, after, strict=True):
            assert b == a or (b == "control" and a != "control"), (b, a)
    shares = Counter(steps[2])
    assert abs(shares["t1"] / len(users) - 0.30) < 0.01 and abs(shares["t2"] / len(users) - 0.05) < 0.01

    # Raising an experiment's traffic only adds users; nobody already in changes arm.
    small = config(two_arms(traffic=0.1))
    large = config(two_arms(traffic=0.4))
    for u in users[:5000]:
        if (arm := arm_of(small, u)) is not None:
            assert arm_of(large, u) == arm


def test_overrides_apply_to_the_arm() -> None:
    cfg = config(two_arms(weight_b=100 - 1e-9))
    cfg = config(
        exp(
            [
                {"name": "a", "weight": 1e-9},
                {
                    "name": "b",
                    "weight": 100 - 1e-9,
                    "overrides": {"candidates": 200, "ranking": False, "version": "v9"},
                },
            ]
        )
    )
    settings = ex.settings_for(ex.assign(cfg, "anyone"), default_candidates=500)
    assert settings == ex.Settings(candidates=200, ranking=False, version="v9")


def test_global_holdout_gets_no_experiment() -> None:
    cfg = config(two_arms(), holdout={"salt": "h", "fraction": 0.1})
    results = [ex.assign(cfg, f"u{i}") for i in range(20_000)]
    held = [r for r in results if r[0].arm.name == "holdout"]
    assert abs(len(held) / len(results) - 0.1) < 0.01
    assert all(len(r) == 1 and r[0].experiment == "holdout" for r in held)
    assert all(r[0].arm.name == "exposed" and len(r) == 2 for r in results if r not in held)


def test_qa_overrides() -> None:
    cfg = config(two_arms(), qa={"users": {"qa-1": {"e1": "b"}}, "allow": ["qa-2"]})
    forced = ex.assign(cfg, "qa-1")
    assert forced[0].arm.name == "b" and forced[0].forced
    for arm in ("a", "b"):
        by_header = ex.assign(cfg, "qa-2", ex.parse_forced(f"e1={arm}"))
        assert by_header[0].arm.name == arm and by_header[0].forced
    # Not on the allowlist: the header is ignored.
    normal = [ex.assign(cfg, f"u{i}", {"e1": "b"})[0] for i in range(50)]
    assert not any(a.forced for a in normal) and {a.arm.name for a in normal} == {"a", "b"}


ARM = {"name": "a", "weight": 100}


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({}, "experiments"),
        ({"experiments": [{"id": "", "salt": "s", "arms": [ARM]}]}, "experiments[0].id"),
        ({"experiments": [{"id": "e", "salt": "s", "arms": []}]}, "experiments[0].arms"),
        ({"experiments": [{"id": "e", "salt": "s", "arms": [{"name": "a", "weight": 0}]}]}, "arms[0].weight"),
        (
            {"experiments": [{"id": "e", "salt": "s", "arms": [{**ARM, "overrides": {"x": 1}}]}]},
            "arms[0].overrides",
        ),
        (
            {"experiments": [{"id": "e", "salt": "s", "arms": [{**ARM, "overrides": {"candidates": 0}}]}]},
            "overrides.candidates",
        ),
        (
            {"experiments": [{"id": "e", "salt": "s", "arms": [{**ARM, "overrides": {"diversity": 1.5}}]}]},
            "overrides.diversity",
        ),
        (
            {
                "experiments": [
                    {"id": "e", "salt": "s", "arms": [{**ARM, "overrides": {"sources": ["bm25"]}}]}
                ]
            },
            "overrides.sources",
        ),
        (
            {"experiments": [{"id": "e", "salt": "s", "arms": [{**ARM, "overrides": {"sources": []}}]}]},
            "overrides.sources",
        ),
        (
            {"experiments": [{"id": "e", "salt": "s", "arms": [{**ARM, "overrides": {"version": "../x"}}]}]},
            "overrides.version",
        ),
        (
            {"experiments": [{"id": "e", "salt": "s", "arms": [{"name": "a", "weight": 90}]}]},
            "experiments[0].arms",
        ),
        (
            {"experiments": [{"id": "e", "salt": "s", "traffic": 1.5, "arms": [ARM]}]},
            "experiments[0].traffic",
        ),
        ({"experiments": [{"id": "e", "salt": "", "arms": [ARM]}]}, "experiments[0].salt"),
        (
            {
                "experiments": [
                    {
                        "id": "e",
                        "salt": "s",
                        "arms": [
                            {"name": "c", "weight": 20},
                            {"name": "t1", "weight": 60},
                            {"name": "t2", "weight": 20},
                        ],
                    }
                ]
            },
            "experiments[0].arms[1].weight",
        ),
        (
            {
                "experiments": [
                    {"id": "e", "salt": "s", "layer": "L", "traffic": 0.6, "arms": [ARM]},
                    {"id": "f", "salt": "s", "layer": "L", "offset": 0.5, "traffic": 0.3, "arms": [ARM]},
                ]
            },
            "experiments[1].offset",
        ),
        (
            {
                "experiments": [
                    {"id": "e", "salt": "s", "layer": "L", "traffic": 0.6, "arms": [ARM]},
                    {"id": "f", "salt": "s", "layer": "L", "traffic": 0.6, "arms": [ARM]},
                ]
            },
            "experiments[1].traffic",
        ),
        (
            {
                "experiments": [
                    {"id": "e", "salt": "s", "layer": "A", "arms": [{**ARM, "overrides": {"candidates": 5}}]},
                    {"id": "f", "salt": "s", "layer": "B", "arms": [{**ARM, "overrides": {"candidates": 9}}]},
                ]
            },
            "experiments[1].arms[0].overrides.candidates",
        ),
        ({"experiments": [], "holdout": {"salt": "h", "fraction": 2}}, "holdout.fraction"),
        (
            {"experiments": [{"id": "e", "salt": "s", "arms": [ARM]}], "qa": {"users": {"q": {"e": "zz"}}}},
            "qa.users.q.e",
        ),
        ({"experiments": [], "extra": 1}, "unknown key"),
    ],
)
def test_malformed_documents_name_the_field(document: object, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ex.parse(document, "bad.yaml")
    assert named in str(caught.value) and "bad.yaml" in str(caught.value)


def test_unreadable_or_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ex.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ex.load(bad)


def test_reloader_keeps_the_previous_config_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"experiments": [two_arms()]}))
    reloader = ex.Reloader(path)
    first = reloader.config
    assert not reloader.poll()  # unchanged
    path.write_text(yaml.safe_dump({"experiments": [two_arms(weight_b=70)]}))  # a + b = 100: fine
    os.utime(path, ns=(1, 1))
    assert reloader.poll() and reloader.config is not first
    good = reloader.config
    broken = two_arms()
    broken["arms"][1]["weight"] = 10  # sums to 60
    path.write_text(yaml.safe_dump({"experiments": [broken]}))
    os.utime(path, ns=(2, 2))
    with caplog.at_level(logging.ERROR):
        assert not reloader.poll()
    assert reloader.config is good
    assert "experiments[0].arms" in (reloader.refused or "")
    assert any("experiments[0].arms" in str(getattr(r, "reason", "")) for r in caplog.records)
    path.unlink()
    assert not reloader.poll() and reloader.config is good  # a vanished file keeps the config too
