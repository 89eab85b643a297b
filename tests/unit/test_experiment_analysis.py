"""The analysis is trustworthy: A/A false-positive rate, power against a known lift, SRM, CUPED,
interleaving credit, the log -> report path, and the gateway's exposure logger."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.v1 import common_pb2
from services.cli import main as cli_main
from services.experiment import analysis, simulate
from services.features.store import Event, EventType
from services.gateway.exposures import ExposureLogger
from services.gateway.interleaving import team_draft

WEIGHTS = {"control": 50.0, "treatment": 50.0}


def test_aa_false_positive_rate_is_nominal() -> None:
    """200 A/A runs (fresh salt and users' behaviour each) at alpha 0.05."""
    runs, hits_mean, hits_ctr = 200, 0, 0
    for run in range(runs):
        cfg = simulate.SimConfig(users=2000, lift=0.0, salt=f"aa-{run}", seed=run, pre_exposures=0)
        report = analysis.analyze(simulate.simulate_table(cfg), "aa", WEIGHTS)
        comp = report.comparisons[0]
        hits_mean += comp.clicks_per_user.p_value < 0.05
        hits_ctr += comp.ctr.p_value < 0.05
    assert 0.02 <= hits_mean / runs <= 0.08, hits_mean / runs
    assert 0.02 <= hits_ctr / runs <= 0.08, hits_ctr / runs


def test_a_true_5_percent_lift_is_detected_with_the_stated_power() -> None:
    cfg = simulate.SimConfig(users=60_000, lift=0.05, salt="power", pre_exposures=0)
    stated = simulate.power(cfg)
    assert stated >= 0.85  # the design: 60k users, 5 responses each, CTR 0.10, +5% -> power >= 85%
    runs = 60
    detected = 0
    for run in range(runs):
        report = analysis.analyze(simulate.simulate_table(replace(cfg, seed=run)), "power", WEIGHTS)
        comp = report.comparisons[0]
        detected += comp.clicks_per_user.p_value < 0.05 and comp.clicks_per_user.absolute > 0
    assert detected / runs >= stated - 0.12, (detected / runs, stated)


def test_cuped_reduces_variance_and_keeps_the_estimate_unbiased() -> None:
    lifts = []
    for run in range(20):
        cfg = simulate.SimConfig(users=20_000, lift=0.05, salt="cuped", seed=run, pre_exposures=10)
        comp = analysis.analyze(simulate.simulate_table(cfg), "c", WEIGHTS).comparisons[0]
        assert comp.cuped_clicks_per_user is not None and comp.cuped_variance_reduction is not None
        assert comp.cuped_variance_reduction > 0.05
        lifts.append(comp.cuped_clicks_per_user.relative)
    assert abs(float(np.mean(lifts)) - 0.05) < 0.02


def test_a_52_48_split_raises_the_srm_warning() -> None:
    broken = simulate.SimConfig(users=20_000, actual_split=0.52, seed=1)
    report = analysis.analyze(simulate.simulate_table(broken), "srm", WEIGHTS)
    assert report.srm_warning and report.srm_p < 0.001
    assert "SAMPLE RATIO MISMATCH" in report.format()
    fine = analysis.analyze(simulate.simulate_table(simulate.SimConfig(users=20_000)), "ok", WEIGHTS)
    assert not fine.srm_warning


def test_delta_method_ratio_matches_a_bootstrap() -> None:
    rng = np.random.default_rng(0)
    den = 1 + rng.poisson(4, 3000).astype(np.float64)
    num = rng.binomial(den.astype(np.int64), 0.1).astype(np.float64)
    est = analysis.ratio_estimate(num, den)
    boots = []
    for _ in range(400):
        idx = rng.integers(0, len(num), len(num))
        boots.append(num[idx].sum() / den[idx].sum())
    assert abs(est.se / float(np.std(boots)) - 1) < 0.15


def test_simulated_log_through_the_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "events.jsonl"
    plot = tmp_path / "sim.png"
    code = cli_main(
        [
            "experiment",
            "simulate",
            "--users",
            "3000",
            "--lift",
            "0.2",
            "--event-log",
            str(log),
            "--plot",
            str(plot),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and plot.stat().st_size > 10_000
    assert "treatment vs control" in out and "SRM check" in out and "CUPED" in out
    # the simulation logs no ratings: the mean rating is undefined, shown as n/a (not "nan")
    assert "nan" not in out.lower() and "mean rating" in out and "n/a" in out
    report_args = ["experiment", "report", "--experiment", "sim", "--event-log", str(log)]
    assert cli_main([*report_args, "--plot", str(plot), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [a["mean_rating"]["value"] for a in printed["arms"]] == [None, None]
    events = analysis.read_jsonl(log)
    report = analysis.report_from_events(events, "sim", WEIGHTS)
    table = simulate.simulate_table(simulate.SimConfig(users=3000, lift=0.2, salt="sim-0", seed=0))
    assert {a.arm: a.users for a in report.arms} == {
        "control": table.arm.count("control"),
        "treatment": table.arm.count("treatment"),
    }
    assert sum(a.clicks for a in report.arms) == int(table.clicks.sum())
    # Retried writes repeat an exposure with the same request_id: counted once.
    with log.open("a") as f:
        f.write(log.read_text().splitlines()[-1] + "\n")
        f.write('{"torn": ')  # a line being written right now is skipped
    assert analysis.read_jsonl(log)[-1] == events[-1]


def test_team_draft_interleaving() -> None:
    a = [common_pb2.ScoredItem(item_id=f"i{i}", score=10 - i) for i in range(10)]
    b = [common_pb2.ScoredItem(item_id=f"i{i}", score=10 - i) for i in (5, 6, 0, 7, 8, 9, 1, 2, 3, 4)]
    rng = random.Random(0)
    for _ in range(50):
        items, team = team_draft(a, b, 8, rng)
        ids = [i.item_id for i in items]
        assert len(ids) == len(set(ids)) == 8
        assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)
        counts = list(team.values())
        assert abs(counts.count("a") - counts.count("b")) <= 1
        assert {"i0", "i5"} <= set(ids[:2]) or "i0" in ids[:2]  # each team's best comes first


def test_interleaving_credit_and_sign_test() -> None:
    events: list[Event] = []
    for u in range(200):
        user = f"u{u}"
        ctx = {"request_id": f"r{u}", "team_a": "x1,x2", "team_b": "y1,y2"}
        events.append(
            Event(user, "", EventType.EXPOSURE, 1000, context=ctx, experiment="il", arm="interleave")
        )
        clicked = "x1" if u % 4 else "y1"  # team A wins 3 of 4 users
        events.append(Event(user, clicked, EventType.CLICK, 2000))
    report = analysis.report_from_events(events, "il")
    (il,) = report.interleaving
    assert (il.wins_a, il.wins_b) == (150, 50) and il.p_value < 1e-6
    assert "sign test" in report.format()


class Flaky(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", None)


def exposures_of(i: int) -> list[common_pb2.Event]:
    return [
        common_pb2.Event(
            event_id=f"{i}-{e}", user_id=f"u{i}", experiment=e, arm="a", context={"request_id": f"{i}-{e}"}
        )
        for e in ("e1", "e2")
    ]


def test_exposure_logger_loses_nothing_under_concurrency_and_failures(tmp_path: Path) -> None:
    written: list[str] = []
    rng = random.Random(0)

    async def write(events: list[common_pb2.Event]) -> None:
        await asyncio.sleep(0)
        if rng.random() < 0.3:
            raise Flaky()  # nothing of the batch was written (the store is all or nothing)
        written.extend(e.context["request_id"] for e in events)

    async def main() -> None:
        logger = ExposureLogger(write, tmp_path / "exposures.jsonl", max_batch=37, max_backoff_s=0.05)

        async def request(i: int) -> None:
            await asyncio.sleep(rng.random() / 100)
            logger.submit(exposures_of(i))

        await asyncio.gather(*(request(i) for i in range(1000)))
        await logger.close()
        assert logger.dropped == 0

    asyncio.run(main())
    assert sorted(written) == sorted(f"{i}-{e}" for i in range(1000) for e in ("e1", "e2"))


def test_exposures_survive_the_gateway_being_killed(tmp_path: Path) -> None:
    """A logger that never delivered (its process killed: no flush, no close) leaves its exposures in
    the spool; the next process on the same file delivers them."""
    spool = tmp_path / "exposures.jsonl"
    delivered: list[str] = []

    async def unreachable(events: list[common_pb2.Event]) -> None:
        raise Flaky()

    async def write(events: list[common_pb2.Event]) -> None:
        delivered.extend(e.event_id for e in events)

    async def killed() -> None:
        logger = ExposureLogger(unreachable, spool, max_backoff_s=0.05)
        for i in range(10):
            logger.submit(exposures_of(i))
        await asyncio.sleep(0.3)
        assert logger.written == 0
        logger.spool.close()  # what the kernel does to a killed process's files; nothing else runs

    async def restarted() -> None:
        logger = ExposureLogger(write, spool)
        logger.start()
        await logger.close()

    asyncio.run(killed())
    asyncio.run(restarted())
    assert sorted(delivered) == sorted(f"{i}-{e}" for i in range(10) for e in ("e1", "e2"))


def test_a_refused_exposure_batch_is_dropped_not_retried_forever(tmp_path: Path) -> None:
    async def refuse(events: list[common_pb2.Event]) -> None:
        raise Flaky(grpc.StatusCode.INVALID_ARGUMENT)

    async def main() -> None:
        logger = ExposureLogger(refuse, tmp_path / "exposures.jsonl", linger_s=0)
        logger.submit(exposures_of(0))
        await logger.close()
        assert logger.dropped == 2 and not logger.spool.pending

    asyncio.run(main())


def test_simulate_over_a_gateway_waits_for_every_late_exposure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The wait ends when each user has all its exposures (one per assigned response), not just one."""
    from services.experiment import cli as experiment_cli

    log = tmp_path / "events.jsonl"

    def exposure(user: str, ts: int) -> Event:
        return Event(user, "i", EventType.EXPOSURE, ts, experiment="x", arm="a")

    simulate.write_events(iter([exposure("early", 1), exposure("late", 2)]), log)
    second = exposure("late", 3)
    writer = threading.Timer(0.5, lambda: simulate.write_events(iter([second]), log))
    writer.start()
    args = argparse.Namespace(event_log=log, redis_url=None, experiment="x", wait_s=10.0)
    experiment_cli._wait_for_exposures(args, {"early": 1, "late": 2})
    assert (
        analysis.read_jsonl(log)[-1] == second
    )  # returned only once the late user's second one was readable
    writer.join()
    # bounded: exposures that never come are reported, not waited for forever
    experiment_cli._wait_for_exposures(
        argparse.Namespace(**{**vars(args), "wait_s": 0.2}), {"early": 1, "late": 2, "never": 2}
    )
    assert "2 of 5 exposures of the simulated users are not in the log" in capsys.readouterr().err
