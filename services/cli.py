"""The `recsys` command: train, serve one service, run all four (`up`), call the gateway, demo."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from services.common import config, tls
from services.items_cli import ItemsError, add_filter_arguments, filter_from_args
from services.items_cli import add_arguments as add_items_arguments
from services.items_cli import main as items_main

SERVICE_MODULES = {
    "gateway": "services.gateway.service",
    "features": "services.features.service",
    "retrieval": "services.retrieval.service",
    "ranking": "services.ranking.service",
}


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def service_module(name: str) -> ModuleType:
    # Imported on demand: `recsys recommend` should not pay for FAISS and LightGBM.
    return importlib.import_module(SERVICE_MODULES[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on an interaction log and publish an artifact version")
    from services.trainer.cli import add_arguments as add_train_arguments

    add_train_arguments(train)

    from services.trainer import versions_cli

    versions_cli.add_versions_arguments(
        commands.add_parser(
            "versions", help="list artifact versions with their metrics and state; prune old ones"
        )
    )
    versions_cli.add_promote_arguments(
        commands.add_parser("promote", help="point CURRENT at a version (its checksums verified first)")
    )
    versions_cli.add_rollback_arguments(
        commands.add_parser("rollback", help="point CURRENT back at the version promoted before it")
    )
    versions_cli.add_retrain_arguments(
        commands.add_parser(
            "retrain", help="`recsys train --gate` every DURATION (the local form of the chart's CronJob)"
        )
    )

    from services.trainer import evaluate_cli

    evaluate = commands.add_parser(
        "evaluate", help="offline benchmark: baselines, two-stage pipeline, report"
    )
    evaluate_cli.add_evaluate_arguments(evaluate)
    data = commands.add_parser("data", help="datasets: `recsys data fetch movielens-100k`")
    evaluate_cli.add_data_arguments(data)

    serve = commands.add_parser(
        "serve",
        help="run one service in the foreground",
        description="`recsys serve NAME --help` lists its flags",
    )
    serve.add_argument("service", choices=sorted(SERVICE_MODULES), help="the service to run")
    serve.add_argument("flags", nargs=argparse.REMAINDER, help="the service's flags (RECSYS_* env vars too)")

    up = commands.add_parser("up", help="run all four services on loopback until Ctrl-C")
    up.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"), help="artifact root to serve")
    up.add_argument("--redis-url", default=None, help="features store in Redis (default: embedded)")
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="address every service listens on (not loopback: the gateway needs RECSYS_API_KEYS_FILE, "
        "or RECSYS_ALLOW_UNAUTHENTICATED=true)",
    )
    up.add_argument("--port", type=int, default=50051, help="gateway port; backends use the next three")
    up.add_argument("--work-dir", type=Path, default=Path("var"), help="logs and the embedded event log")
    up.add_argument("--replicas", type=int, default=1, help="processes per backend service (round_robin)")
    up.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="certificates as `recsys certs make DIR` writes them: the gateway serves TLS, the gateway and "
        "the backends use mutual TLS",
    )

    recommend = commands.add_parser("recommend", help="ask the gateway for a user's top k")
    recommend.add_argument("--user", required=True, help="user id")
    recommend.add_argument("-k", type=int, default=10, help="items to return")
    recommend.add_argument("--exclude", nargs="*", default=[], help="item ids never to return")
    recommend.add_argument(
        "--gateway", default="127.0.0.1:50051", help="gateway HOST:PORT (its API key: env RECSYS_API_KEY)"
    )
    recommend.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"), help="for titles")
    recommend.add_argument(
        "--explain", action="store_true", help="why each item: its sources and top feature contributions"
    )
    tls.add_client_arguments(recommend)
    add_filter_arguments(recommend)

    add_items_arguments(commands)

    feedback = commands.add_parser("feedback", help="send one event through the gateway")
    feedback.add_argument("--user", required=True, help="user id")
    feedback.add_argument("--item", required=True, help="item id")
    feedback.add_argument(
        "--type", choices=["impression", "click", "rating"], default="click", help="event type"
    )
    feedback.add_argument("--rating", type=float, default=0.0, help="the rating of a rating event")
    feedback.add_argument(
        "--gateway", default="127.0.0.1:50051", help="gateway HOST:PORT (its API key: env RECSYS_API_KEY)"
    )
    tls.add_client_arguments(feedback)

    bench = commands.add_parser("bench", help="benchmarks against a running platform").add_subparsers(
        dest="bench", required=True
    )
    load = bench.add_parser("load", help="bounded closed- or open-loop load on the gateway (loopback only)")
    load.add_argument(
        "--gateway",
        default="127.0.0.1:50051",
        help="gateway HOST:PORT (loopback only; its API key: env RECSYS_API_KEY)",
    )
    load.add_argument(
        "--mode",
        choices=["closed", "open"],
        default="closed",
        help="closed: a fixed number in flight; open: a fixed start rate",
    )
    load.add_argument("--concurrency", type=int, default=1, help="closed loop: requests in flight")
    load.add_argument("--rps", type=float, default=100.0, help="open loop: requests started per second")
    load.add_argument("--duration", type=float, default=10.0, help="seconds (at most 600)")
    load.add_argument("--max-requests", type=int, default=10_000, help="stop after this many requests")
    load.add_argument("--users", type=int, default=1000, help="distinct user ids to cycle through")
    load.add_argument("--users-from", type=Path, default=None, help="artifact root: use its trained user ids")
    load.add_argument("-k", type=int, default=10, help="items per request")
    load.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    tls.add_client_arguments(load)

    budget = commands.add_parser("budget", help="latency budgets").add_subparsers(
        dest="budget", required=True
    )
    report = budget.add_parser(
        "report", help="per-stage p50/p95/p99 from exported spans against budget; exit 1 on a violation"
    )
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--spans", nargs="+", type=Path, help="OTLP JSON lines files (OTEL_TRACES_EXPORTER=file)"
    )
    source.add_argument("--listen", help="HOST:PORT to receive OTLP/gRPC on for --duration seconds instead")
    report.add_argument("--duration", type=float, default=60.0, help="seconds to listen with --listen")

    synth = commands.add_parser(
        "synth", help="a synthetic catalogue at scale (e.g. 1M items) for performance work"
    )
    synth.add_argument("--out", type=Path, required=True, help="artifact root to publish the version into")
    synth.add_argument("--items", type=int, default=1_000_000, help="catalogue size")
    synth.add_argument("--users", type=int, default=20_000, help="users with histories and feature rows")
    synth.add_argument("--trees", type=int, default=300, help="ranker trees, over its seeded models")
    synth.add_argument("--neighbours", type=int, default=20, help="links per item in each item-item table")
    synth.add_argument(
        "--candidates", type=int, default=None, help="fused candidates per request (default: the pipeline's)"
    )
    synth.add_argument("--recall", type=float, default=0.95, help="the ANN indexes' recall@500 target")

    demo = commands.add_parser("demo", help="train if needed, start everything, show recommendations, stop")
    demo.add_argument(
        "--artifacts-dir", type=Path, default=Path("artifacts"), help="artifact root; trained into if empty"
    )
    demo.add_argument(
        "--work-dir", type=Path, default=Path("var/demo"), help="logs and the embedded event log"
    )
    demo.add_argument("--redis-url", default=None, help="features store in Redis (default: embedded)")
    demo.add_argument("--users", type=int, default=3, help="warm users to show (a cold one is added)")
    demo.add_argument("--requests", type=int, default=200, help="sequential requests for the latency table")

    from services.k8s import add_arguments as add_k8s_arguments

    add_k8s_arguments(commands.add_parser("k8s", help="check a Helm release on Kubernetes (smoke)"))

    from services.monitor_cli import add_arguments as add_monitor_arguments

    add_monitor_arguments(commands.add_parser("monitor", help="feature drift of a running ranking service"))

    from services.certs import add_arguments as add_certs_arguments

    add_certs_arguments(commands.add_parser("certs", help="TLS: a CA and certificates for `up --tls-dir`"))

    from services.keys_cli import add_arguments as add_keys_arguments

    add_keys_arguments(commands.add_parser("keys", help="the gateway's API keys: add or remove one"))

    from services.experiment.cli import add_arguments as add_experiment_arguments

    add_experiment_arguments(commands.add_parser("experiment", help="A/B report and simulator"))
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from services.common.server import StartupError, run

    module = service_module(args.service)
    cfg = config.parse(module.Config, args.flags, prog=f"recsys serve {args.service}")
    try:
        run(args.service, lambda: module.create(cfg), cfg)
    except StartupError as e:
        raise CommandError(str(e)) from e
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from services.local import BACKENDS, SERVICES, LocalPlatform

    ports = {name: args.port + i for i, name in enumerate(("gateway", "features", "retrieval", "ranking"))}
    platform = LocalPlatform(
        args.artifacts_dir,
        args.work_dir / "logs",
        host=args.host,
        ports=ports,
        redis_url=args.redis_url,
        event_log=args.work_dir / "events.jsonl",
        replicas={b: args.replicas for b in BACKENDS},
        tls_dir=args.tls_dir,
    )
    if args.tls_dir is not None:
        platform.check_tls()
    # Installed first: a SIGTERM while the services start must still stop them all.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with platform:
        for name in SERVICES:
            for replica in platform.replica_names(name):
                print(f"{replica:<12} {platform.address(replica)}  pid {platform.processes[replica].pid}")
        print(f"logs in {platform.log_dir}; Ctrl-C stops all four", flush=True)
        if args.tls_dir is not None:
            print(f"TLS: call the gateway with --tls-ca {args.tls_dir / 'ca.crt'}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    import grpc

    from services.client import Client, api_key_from_env
    from services.demo import format_response, load_titles

    try:
        rules = filter_from_args(args)
    except ItemsError as e:
        raise CommandError(str(e)) from e
    with Client(args.gateway, api_key=api_key_from_env(), tls=tls.client_from_args(args)) as client:
        try:
            response = client.recommend(
                args.user, k=args.k, exclude=args.exclude, debug=True, explain=args.explain, item_filter=rules
            )
        except grpc.RpcError as e:
            raise CommandError(f"{e.code().name}: {e.details()}") from e
    print(format_response(response, load_titles(args.artifacts_dir)))
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    import grpc

    from services.client import Client, api_key_from_env, event

    with Client(args.gateway, api_key=api_key_from_env(), tls=tls.client_from_args(args)) as client:
        try:
            accepted = client.feedback([event(args.user, args.item, args.type, args.rating)])
        except grpc.RpcError as e:
            raise CommandError(f"{e.code().name}: {e.details()}") from e
    print(f"accepted {accepted}")
    return 0


def cmd_items(args: argparse.Namespace) -> int:
    try:
        return items_main(args)
    except ItemsError as e:
        raise CommandError(str(e)) from e


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from services.client import api_key_from_env
    from services.loadgen import LoadConfig, LoadError, format_result, run

    users = [f"load-user-{i}" for i in range(args.users)]
    if args.users_from is not None:
        from services.demo import demo_users

        users = demo_users(args.users_from, args.users)
    config = LoadConfig(
        gateway=args.gateway,
        users=users,
        mode=args.mode,
        concurrency=args.concurrency,
        rps=args.rps,
        duration_s=args.duration,
        max_requests=args.max_requests,
        k=args.k,
        api_key=api_key_from_env(),
        tls=tls.client_from_args(args),
    )
    try:
        result = run(config)
    except LoadError as e:
        raise CommandError(str(e)) from e
    print(format_result(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    import time

    from services import budget
    from services.common.otlp_receiver import OtlpReceiver, read_json_lines

    if args.spans:
        missing = [str(p) for p in args.spans if not p.is_file()]
        if missing:
            raise CommandError(f"--spans: no such file {', '.join(missing)}")
        try:
            spans = read_json_lines(args.spans)
        except ValueError as e:
            raise CommandError(str(e)) from e
    else:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--listen: expected HOST:PORT, got {args.listen!r}")
        receiver = OtlpReceiver(host, int(port)).start()
        print(f"receiving OTLP on {args.listen} for {args.duration:.0f} s", file=sys.stderr)
        time.sleep(args.duration)
        receiver.stop()
        spans = receiver.spans
    try:
        reports = budget.build(spans)
    except budget.NoBudgetedSpans as e:
        raise CommandError(str(e)) from e
    print(budget.format_reports(reports))
    violated = [r.stage for r in reports if r.violated]
    if violated:
        print(f"budget violated (p99 over budget): {', '.join(violated)}", file=sys.stderr)
        return 1
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from services.trainer.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(
        out=args.out,
        items=args.items,
        users=args.users,
        trees=args.trees,
        neighbours=args.neighbours,
        recall_target=args.recall,
        **({} if args.candidates is None else {"candidates": args.candidates}),
    )
    try:
        config.validate()
    except ValueError as e:
        raise CommandError(str(e)) from e
    print(generate(config).path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import run

    return run(args.artifacts_dir, args.work_dir, args.redis_url, args.users, args.requests)


def cmd_train(args: argparse.Namespace) -> int:
    from services.trainer.cli import main as train_main

    return train_main(args)


def learning_loop(name: str) -> Callable[[argparse.Namespace], int]:
    """`recsys versions|promote|rollback|retrain`: their errors are one line and exit 2."""

    def run(args: argparse.Namespace) -> int:
        from services.common.artifacts import ArtifactError
        from services.trainer import versions_cli

        try:
            result: int = getattr(versions_cli, f"cmd_{name}")(args)
        except (ArtifactError, ValueError, OSError) as e:
            raise CommandError(str(e)) from e
        return result

    return run


def cmd_k8s(args: argparse.Namespace) -> int:
    from services.k8s import main as k8s_main

    return k8s_main(args)


def cmd_certs(args: argparse.Namespace) -> int:
    from services.certs import main as certs_main

    return certs_main(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from services.keys_cli import main as keys_main

    return keys_main(args)


def cmd_experiment(args: argparse.Namespace) -> int:
    from services.experiment.cli import main as experiment_main

    return experiment_main(args)


def cmd_monitor(args: argparse.Namespace) -> int:
    from services.monitor_cli import main as monitor_main

    return monitor_main(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from services.trainer.evaluate_cli import evaluate_main

    return evaluate_main(args)


def cmd_data(args: argparse.Namespace) -> int:
    from services.trainer.evaluate_cli import data_main

    return data_main(args)


COMMANDS = {
    "evaluate": cmd_evaluate,
    "data": cmd_data,
    "experiment": cmd_experiment,
    "train": cmd_train,
    "versions": learning_loop("versions"),
    "promote": learning_loop("promote"),
    "rollback": learning_loop("rollback"),
    "retrain": learning_loop("retrain"),
    "serve": cmd_serve,
    "up": cmd_up,
    "recommend": cmd_recommend,
    "feedback": cmd_feedback,
    "items": cmd_items,
    "similar": cmd_items,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "budget": cmd_budget,
    "synth": cmd_synth,
    "k8s": cmd_k8s,
    "monitor": cmd_monitor,
    "keys": cmd_keys,
    "certs": cmd_certs,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CommandError, config.ConfigError) as e:
        print(f"recsys {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
