from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from scipy.stats import chisquare

from services.common.config import ConfigError
from services.gateway import experiments


def two_arms(weight_b: float = 50) -> tuple[experiments.Experiment, ...]:
    return experiments.parse(
        {
            "experiments": [
                {
                    "id": "e1",
                    "salt": "s1",
                    "arms": [
                        {"name": "a", "weight": 100 - weight_b},
                        {"name": "b", "weight": weight_b, "overrides": {"candidates": 200, "ranking": False}},
                    ],
                }
            ]
        },
        "test.yaml",
    )


def test_default_file_loads() -> None:
    loaded = experiments.load(experiments.DEFAULT_FILE)
    assert [a.name for a in loaded[0].arms] == ["control", "candidates_200"]


def test_assignment_is_deterministic_and_balanced() -> None:
    exps = two_arms()
    users = [f"user-{i}" for i in range(20_000)]
    first = [experiments.assign(exps, u)[0][1].name for u in users]
    assert first == [experiments.assign(exps, u)[0][1].name for u in users]
    counts = Counter(first)
    assert chisquare([counts["a"], counts["b"]]).pvalue > 0.001


def test_overrides_apply_to_the_arm() -> None:
    exps = two_arms(weight_b=100 - 1e-9)
    settings = experiments.settings_for(experiments.assign(exps, "anyone"), default_candidates=500)
    assert settings == experiments.Settings(candidates=200, ranking=False)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({}, "experiments"),
        (
            {"experiments": [{"id": "", "salt": "s", "arms": [{"name": "a", "weight": 1}]}]},
            "experiments[0].id",
        ),
        ({"experiments": [{"id": "e", "salt": "s", "arms": []}]}, "experiments[0].arms"),
        ({"experiments": [{"id": "e", "salt": "s", "arms": [{"name": "a", "weight": 0}]}]}, "arms[0].weight"),
        (
            {
                "experiments": [
                    {"id": "e", "salt": "s", "arms": [{"name": "a", "weight": 1, "overrides": {"x": 1}}]}
                ]
            },
            "arms[0].overrides",
        ),
        (
            {
                "experiments": [
                    {
                        "id": "e",
                        "salt": "s",
                        "arms": [{"name": "a", "weight": 1, "overrides": {"candidates": 0}}],
                    }
                ]
            },
            "overrides.candidates",
        ),
    ],
)
def test_malformed_documents_name_the_field(document: object, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        experiments.parse(document, "bad.yaml")
    assert named in str(caught.value) and "bad.yaml" in str(caught.value)


def test_unreadable_or_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        experiments.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        experiments.load(bad)
