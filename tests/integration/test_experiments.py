"""Experiments over the wire: two arms on two artifact versions (different rankers), the arm in the
response, exposures in the log, the report reading them, hot reload, two gateway replicas agreeing."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import main as cli_main
from services.client import Client, event
from services.common.artifacts import ArtifactVersion, set_current
from services.experiment import analysis
from services.gateway import experiments as ex
from services.local import LocalPlatform, free_port
from tests.support import BUNDLED_DATA, RELAXED_BUDGETS, light_pipeline


def arms_file(v1: str, allow: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "qa": {"allow": ["qa-user", *allow]},
        "experiments": [
            {
                "id": "ranker",
                "layer": "ranking",
                "salt": "ranker-it",
                "arms": [
                    {"name": "control", "weight": 50},
                    {"name": "v1", "weight": 50, "overrides": {"version": v1}},
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def two_versions(trained: ArtifactVersion, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A root of its own (the session platform's CURRENT stays put): the session version as v1, plus v2
    trained with other ranker parameters; CURRENT = v2, PINNED = v1."""
    from services.trainer.train import TrainConfig, train

    root = tmp_path_factory.mktemp("two-versions")
    shutil.copytree(trained.path, root / trained.version)
    other = light_pipeline(
        "ranker.num_leaves=4", "ranker.learning_rate=0.3", "ranker.rounds=10", "protocol.windows=1"
    )
    v2 = train(TrainConfig(data=BUNDLED_DATA, out=root, pipeline=other, progress=False))
    set_current(root, v2.version)
    (root / "PINNED").write_text(f"# experiment arms\n{trained.version}\n")
    return root, trained.version, v2.version


@pytest.fixture(scope="module")
def running(
    two_versions: tuple[Path, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalPlatform, Path, Path]]:
    root, v1, _ = two_versions
    work = tmp_path_factory.mktemp("experiments-platform")
    exp_file = work / "experiments.yaml"
    exp_file.write_text(yaml.safe_dump(arms_file(v1, ALLOWED)))
    log = work / "events.jsonl"
    platform = LocalPlatform.on_free_ports(
        root,
        work / "logs",
        event_log=log,
        extra_args={
            "gateway": ["--experiments", str(exp_file), "--experiments-reload-s", "0.2", *RELAXED_BUDGETS]
        },
    )
    with platform:
        yield platform, exp_file, log


#: Warm users the QA header may force (they see both rankers).
ALLOWED = tuple(f"{u}" for u in range(1, 60, 6))


def users_in(cfg: ex.Config, arm: str, warm: list[str], n: int) -> list[str]:
    return [u for u in warm if ex.assign(cfg, u)[0].arm.name == arm][:n]


def restore_experiments(platform: LocalPlatform, exp_file: Path, good: str) -> None:
    """Put the module's experiments file back and wait until the gateway serves it again, so the next
    test starts from it."""
    exp_file.write_text(good)
    os.utime(exp_file)
    expected = yaml.safe_load(good)["experiments"][0]["id"]
    deadline = time.monotonic() + 10
    with Client(platform.address("gateway")) as client:
        while client.recommend("a", k=3).assignments[0].experiment != expected:
            assert time.monotonic() < deadline, f"the gateway did not reload {exp_file.name}"
            time.sleep(0.1)


def exposures(log: Path) -> list[Any]:
    if not log.exists():
        return []
    return [e for e in analysis.read_jsonl(log) if e.type.value == "exposure"]


def test_arms_serve_different_ranker_versions_and_exposures_reach_the_report(
    running: tuple[LocalPlatform, Path, Path],
    two_versions: tuple[Path, str, str],
    trained: ArtifactVersion,
    tmp_path: Path,
) -> None:
    platform, exp_file, log = running
    _, v1, v2 = two_versions
    cfg = ex.load(exp_file)
    warm = sorted(json.loads(trained.file("user_history.json").read_text()))
    with Client(platform.address("gateway")) as client:
        # The same user under both arms (QA header): same pipeline shape, different ranker versions.
        for arm, version in (("control", v2), ("v1", v1)):
            r = client.recommend("qa-user", k=20, context={ex.FORCE_KEY: f"ranker={arm}"})
            assert [(a.experiment, a.arm) for a in r.assignments] == [("ranker", arm)]
            assert r.artifact_version == version and not r.degraded, r.degraded_reasons
        n_before = len(exposures(log))
        served: dict[str, list[str]] = {}
        for arm, version in (("control", v2), ("v1", v1)):
            for user in users_in(cfg, arm, warm, 15):
                r = client.recommend(user, k=10)
                assert [(a.experiment, a.arm) for a in r.assignments] == [("ranker", arm)]
                assert r.artifact_version == version and not r.degraded, r.degraded_reasons
                served.setdefault(arm, []).append(user)
                if served[arm].index(user) % 3 == 0:
                    client.feedback([event(user, r.items[0].item_id, "click")])
        # 60 more requests in parallel: exactly one exposure each.
        everyone = served["control"] + served["v1"]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda u: client.recommend(u, k=5), everyone * 2))
    deadline = time.monotonic() + 10
    while len(exposures(log)) < n_before + 90 and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = exposures(log)[n_before:]
    assert len(logged) == 90
    assert {(e.user_id, e.arm) for e in logged} == {(u, a) for a, us in served.items() for u in us}
    assert "qa-user" not in {e.user_id for e in exposures(log)}  # QA traffic is never logged

    report = analysis.report_from_events(analysis.read_jsonl(log), "ranker", {"control": 50, "v1": 50})
    assert {a.arm: a.users for a in report.arms} == {"control": 15, "v1": 15}
    assert {a.arm: a.clicks for a in report.arms} == {"control": 5, "v1": 5}
    plot = tmp_path / "ranker.png"
    code = cli_main(
        [
            "experiment",
            "report",
            "--experiment",
            "ranker",
            "--event-log",
            str(log),
            "--experiments",
            str(exp_file),
            "--plot",
            str(plot),
        ]
    )
    assert code == 0 and plot.exists()


def test_experiment_simulate_drives_the_gateway_and_reports_every_simulated_user(
    running: tuple[LocalPlatform, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    platform, exp_file, log = running
    plot = tmp_path / "simulated.png"
    code = cli_main(
        [
            "experiment",
            "simulate",
            "--gateway",
            platform.address("gateway"),
            "--experiment",
            "ranker",
            "--experiments",
            str(exp_file),
            "--users",
            "40",
            "--seed",
            "7",
            "--lift",
            "1.0",
            "--base-ctr",
            "0.5",
            "--event-log",
            str(log),
            "--plot",
            str(plot),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and plot.stat().st_size > 0
    # the gateway assigned the users (its own hash), and the CLI waited for all their exposures
    cfg = ex.load(exp_file)
    expected: dict[str, int] = {}
    for i in range(40):
        arm = ex.assign(cfg, f"sim-7-{i}")[0].arm.name
        expected[arm] = expected.get(arm, 0) + 1
    assert f"simulated 40 users over {platform.address('gateway')}: {dict(sorted(expected.items()))}" in out
    simulated = [e for e in analysis.read_jsonl(log) if e.user_id.startswith("sim-7-")]
    report = analysis.report_from_events(simulated, "ranker")
    assert {a.arm: a.users for a in report.arms} == expected
    assert {a.arm: a.exposures for a in report.arms} == {arm: 2 * n for arm, n in expected.items()}
    assert all(a.clicks > 0 for a in report.arms)
    assert "ranker  (control: control)" in out and "v1 vs control" in out


def test_different_ranker_versions_rank_differently(
    running: tuple[LocalPlatform, Path, Path], trained: ArtifactVersion
) -> None:
    platform, _, _ = running
    with Client(platform.address("gateway")) as client:
        different = 0
        for user in ALLOWED:
            lists = [
                [
                    i.item_id
                    for i in client.recommend(user, k=10, context={ex.FORCE_KEY: f"ranker={arm}"}).items
                ]
                for arm in ("control", "v1")
            ]
            different += lists[0] != lists[1]
        assert different >= len(ALLOWED) // 2, different


def test_a_bad_experiments_file_is_refused_and_the_old_config_serves(
    running: tuple[LocalPlatform, Path, Path], two_versions: tuple[Path, str, str]
) -> None:
    platform, exp_file, _ = running
    _, v1, _ = two_versions
    good = exp_file.read_text()
    broken = arms_file(v1, ALLOWED)
    broken["experiments"][0]["arms"][1]["weight"] = 70  # sums to 120
    try:
        with Client(platform.address("gateway")) as client:
            before = {u: client.recommend(u, k=3).assignments[0].arm for u in ("a", "b", "c", "d")}
            exp_file.write_text(yaml.safe_dump(broken))
            deadline = time.monotonic() + 10
            while "experiments[0].arms" not in platform.log_tail("gateway", 50):
                assert time.monotonic() < deadline, platform.log_tail("gateway")
                assert {u: client.recommend(u, k=3).assignments[0].arm for u in before} == before
                time.sleep(0.1)
            assert {u: client.recommend(u, k=3).assignments[0].arm for u in before} == before
            # A good file is picked up without a restart.
            renamed = arms_file(v1, ALLOWED)
            renamed["experiments"][0]["id"] = "ranker2"
            exp_file.write_text(yaml.safe_dump(renamed))
            deadline = time.monotonic() + 10
            while client.recommend("a", k=3).assignments[0].experiment != "ranker2":
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        restore_experiments(platform, exp_file, good)


def test_two_gateway_replicas_agree(running: tuple[LocalPlatform, Path, Path]) -> None:
    platform, _, _ = running
    replica = LocalPlatform(
        platform.artifacts_dir,
        platform.log_dir / "replica",
        ports={**platform.ports, "gateway": free_port()},
        extra_args=platform.extra_args,
    )
    replica.start_service("gateway")
    try:
        replica.wait_serving("gateway")
        users = [f"replica-user-{i}" for i in range(40)]
        with Client(platform.address("gateway")) as one, Client(replica.address("gateway")) as two:
            first = [one.recommend(u, k=2).assignments[0].arm for u in users]
            assert first == [two.recommend(u, k=2).assignments[0].arm for u in users]
        assert set(first) == {"control", "v1"}
    finally:
        replica.stop()


def variants_file(v1: str) -> dict[str, Any]:
    arms = [
        {"name": "control", "weight": 25},
        {"name": "diverse", "weight": 25, "overrides": {"diversity": 0.3}},
        {"name": "recent_only", "weight": 25, "overrides": {"sources": ["recent", "popular"]}},
        {"name": "interleaved", "weight": 25, "overrides": {"interleave": v1}},
    ]
    return {
        "qa": {"allow": list(ALLOWED)},
        "experiments": [{"id": "variants", "layer": "ranking", "salt": "variants-it", "arms": arms}],
    }


def intra_list_similarity(vectors: dict[str, Any], items: list[str]) -> float:
    import numpy as np

    unit = np.stack([vectors[i] / np.linalg.norm(vectors[i]) for i in items])
    sims = unit @ unit.T
    return float((sims.sum() - len(items)) / (len(items) * (len(items) - 1)))


def test_pipeline_variants_diversity_sources_and_interleaving_over_the_wire(
    running: tuple[LocalPlatform, Path, Path], two_versions: tuple[Path, str, str], trained: ArtifactVersion
) -> None:
    import numpy as np

    platform, exp_file, log = running
    root, v1, v2 = two_versions
    good = exp_file.read_text()
    exp_file.write_text(yaml.safe_dump(variants_file(v1)))
    ids = json.loads((root / v2 / "item_ids.json").read_text())
    manifest = json.loads((root / v2 / "manifest.json").read_text())
    fused = set(manifest["pipeline"]["fusion"]["fused"])
    vectors = dict(zip(ids, np.load(root / v2 / manifest["diversity"]["file"]), strict=True))
    try:
        with Client(platform.address("gateway")) as client:
            deadline = time.monotonic() + 10
            while client.recommend("1", k=3).assignments[0].experiment != "variants":
                assert time.monotonic() < deadline, "the variants file was not picked up"
                time.sleep(0.1)

            def forced(user: str, arm: str) -> Any:
                r = client.recommend(user, k=10, context={ex.FORCE_KEY: f"variants={arm}"})
                assert [(a.experiment, a.arm) for a in r.assignments] == [("variants", arm)]
                assert not r.degraded, r.degraded_reasons
                return r

            less_similar = warm_users = 0
            similarity = {"control": 0.0, "diverse": 0.0}
            for user in ALLOWED:
                control = [i.item_id for i in forced(user, "control").items]
                diverse = forced(user, "diverse")
                scores = [i.score for i in diverse.items]
                assert scores == sorted(scores, reverse=True)
                mine = intra_list_similarity(vectors, [i.item_id for i in diverse.items])
                theirs = intra_list_similarity(vectors, control)
                less_similar += mine < theirs
                similarity["diverse"] += mine
                similarity["control"] += theirs
                # Retrieval from two sources only: the candidates come from them (the fused one, or the
                # popular top-up)
                assert {i.source for i in forced(user, "recent_only").items} <= {"recent", "popular"}
                warm_users += bool(fused & {i.source for i in forced(user, "control").items})
            # greedy MMR lowers the list's similarity for nearly every user, and on the whole
            assert less_similar >= 0.8 * len(ALLOWED), "MMR did not lower intra-list similarity"
            assert similarity["diverse"] < 0.9 * similarity["control"], similarity
            assert warm_users == len(ALLOWED), "control should retrieve from the version's fused sources"

            # Interleaving: both rankers inside one response; clicks credit their team in the report.
            cfg = ex.load(exp_file)
            users = [
                f"il-user-{i}"
                for i in range(400)
                if ex.assign(cfg, f"il-user-{i}")[0].arm.name == "interleaved"
            ]
            for user in users[:12]:
                r = client.recommend(user, k=10)
                assert "+" in r.artifact_version  # both versions served this response
                client.feedback([event(user, r.items[0].item_id, "click")])
        deadline = time.monotonic() + 10
        while True:
            report = analysis.report_from_events(
                analysis.read_jsonl(log),
                "variants",
                {a: 25 for a in ("control", "diverse", "recent_only", "interleaved")},
            )
            il = report.interleaving[0] if report.interleaving else None
            if (il is not None and il.wins_a + il.wins_b + il.ties == 12) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert il is not None and il.arm == "interleaved"
        assert il.wins_a + il.wins_b == 12 and il.ties == 0  # every click landed on one team's item
        assert 0 <= il.p_value <= 1
    finally:
        restore_experiments(platform, exp_file, good)
