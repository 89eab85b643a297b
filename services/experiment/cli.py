"""`recsys experiment report|simulate`: the experimenter's side of A/B testing."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from services.common.tls import add_client_arguments, client_from_args
from services.gateway import experiments as ex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment_command", required=True)

    def log_source(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--event-log", type=Path, default=Path("var/events.jsonl"), help="embedded store's log"
        )
        p.add_argument("--redis-url", default=None, help="read the Redis store's event stream instead")
        p.add_argument("--redis-prefix", default="recsys", help="key namespace of the features service")

    def experiments_file(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--experiments",
            type=Path,
            default=ex.DEFAULT_FILE,
            help="the experiments file (expected weights)",
        )

    report = sub.add_parser("report", help="per-arm metrics, lifts with 95%% CIs, SRM, CUPED, interleaving")
    report.add_argument("--experiment", required=True, help="experiment id")
    log_source(report)
    experiments_file(report)
    report.add_argument("--control", default=None, help="control arm (default: the file's first arm)")
    report.add_argument("--plot", type=Path, default=None, help="PNG path (default: <experiment>.png)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")

    sim = sub.add_parser("simulate", help="synthetic users with a known true lift, then the report")
    sim.add_argument("--users", type=int, default=20_000, help="simulated users")
    sim.add_argument("--lift", type=float, default=0.05, help="true relative lift of the treatment")
    sim.add_argument("--base-ctr", type=float, default=0.1, help="the control arm's click-through rate")
    sim.add_argument("--split", type=float, default=None, help="inject a broken split, e.g. 0.52 (SRM)")
    sim.add_argument("--seed", type=int, default=0, help="random seed of the simulated clicks")
    sim.add_argument("--experiment", default="sim", help="experiment id")
    sim.add_argument(
        "--gateway",
        default=None,
        help="drive a running gateway instead (exposures come from it; API key with the recommend and "
        "feedback roles: env RECSYS_API_KEY)",
    )
    sim.add_argument("--control", default="control", help="control arm")
    experiments_file(sim)
    sim.add_argument(
        "--wait-s", type=float, default=10.0, help="--gateway: how long to wait for its exposures in the log"
    )
    log_source(sim)
    sim.add_argument("--plot", type=Path, default=None, help="PNG path (default: <experiment>.png)")
    add_client_arguments(sim, "the --gateway")


def _events(args: argparse.Namespace) -> list:  # type: ignore[type-arg]
    from services.experiment import analysis

    if args.redis_url:
        return analysis.read_redis(args.redis_url, args.redis_prefix)
    if not args.event_log.exists():
        raise FileNotFoundError(f"{args.event_log}: no event log (pass --event-log or --redis-url)")
    return analysis.read_jsonl(args.event_log)


def _report(args: argparse.Namespace, weights: dict[str, float] | None, control: str | None) -> int:
    from services.experiment import analysis

    report = analysis.report_from_events(_events(args), args.experiment, weights, control)
    if not report.arms or sum(a.users for a in report.arms) == 0:
        print(f"recsys experiment report: no exposures of experiment {args.experiment!r}", file=sys.stderr)
        return 1
    report.plot = str(analysis.plot(report, args.plot or Path(f"{args.experiment}.png")))
    print(
        json.dumps(report.to_json(), indent=2, default=str)
        if getattr(args, "json", False)
        else report.format()
    )
    if report.srm_warning:
        print("WARNING: sample ratio mismatch; see the top of the report", file=sys.stderr)
    return 0


def _expected(path: Path, experiment: str) -> tuple[dict[str, float] | None, str | None]:
    """The arms' configured weights and control arm from the experiments file (None: equal weights)."""
    try:
        config = ex.load(path)
    except Exception as e:  # the report still runs: equal weights, first arm alphabetically
        print(f"note: {e}; assuming equal weights", file=sys.stderr)
        return None, None
    exp = config.by_id(experiment)
    if exp is not None:
        return {a.name: a.weight for a in exp.arms}, exp.arms[0].name
    if config.holdout is not None and experiment == config.holdout.id:
        return {"holdout": config.holdout.fraction, "exposed": 1 - config.holdout.fraction}, "holdout"
    return None, None


def _wait_for_exposures(args: argparse.Namespace, expected: dict[str, int]) -> None:
    """The gateway logs exposures off the request path: wait (bounded by --wait-s) until each simulated
    user has as many exposures in the log as responses it was assigned in, so the report counts them
    all. Each poll re-reads the log, so polls are spaced by at least the time a read takes."""
    deadline = time.monotonic() + args.wait_s
    while True:
        started = time.monotonic()
        logged = Counter(
            e.user_id
            for e in _events(args)
            if e.type.value == "exposure" and e.experiment == args.experiment and e.user_id in expected
        )
        missing = sum(max(n - logged[user], 0) for user, n in expected.items())
        if missing == 0:
            return
        now = time.monotonic()
        if now >= deadline:
            print(
                f"note: {missing} of {sum(expected.values())} exposures of the simulated users are not in "
                f"the log after {args.wait_s:g} s; the report counts the rest",
                file=sys.stderr,
            )
            return
        time.sleep(min(max(0.1, now - started), deadline - now))


def main(args: argparse.Namespace) -> int:
    if args.experiment_command == "report":
        weights, control = _expected(args.experiments, args.experiment)
        return _report(args, weights, args.control or control)

    from services.client import api_key_from_env
    from services.experiment import simulate

    if args.gateway:
        per_arm = simulate.simulate_wire(
            args.gateway,
            args.experiment,
            args.users,
            args.lift,
            args.base_ctr,
            control=args.control,
            seed=args.seed,
            api_key=api_key_from_env(),
            tls=client_from_args(args),
        )
        counts = {arm: len(users) for arm, users in sorted(per_arm.items())}
        print(f"simulated {sum(counts.values())} users over {args.gateway}: {counts}")
        _wait_for_exposures(args, {user: n for users in per_arm.values() for user, n in users.items()})
        weights, control = _expected(args.experiments, args.experiment)
        args.json = False
        return _report(args, weights, control or args.control)
    cfg = simulate.SimConfig(
        users=args.users,
        lift=args.lift,
        base_ctr=args.base_ctr,
        actual_split=args.split,
        seed=args.seed,
        experiment=args.experiment,
        salt=f"{args.experiment}-{args.seed}",
    )
    n = simulate.write_events(simulate.simulate_events(cfg), args.event_log)
    print(
        f"simulated {cfg.users} users, true lift {cfg.lift:+.1%}, {n} events -> {args.event_log} "
        f"(power of the clicks/user test at alpha 0.05: {simulate.power(cfg):.0%})"
    )
    args.json = False
    return _report(args, cfg.weights(), simulate.CONTROL)
