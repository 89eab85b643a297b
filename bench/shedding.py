"""Load shedding at twice the capacity: the gateway's admission limit on against off, in one run.

The platform (four processes, the 1M-item catalogue of bench/latency_1m.py by default) is measured
first for its capacity: answered requests per second in a closed loop at `--concurrency` in flight,
without an admission limit. Then an open loop at `--factor` times that rate, for `--seconds`, against
a gateway with the default admission limit (`--limit` to try others) and against one without a limit
(`--max-in-flight 0`).
Each reports the admitted (OK) p50/p99 against the total budget (100 ms), the shed share
(RESOURCE_EXHAUSTED) and how soon a shed request was told, other errors and degraded responses. All
latencies are the client's, from each request's scheduled start.

    .venv/bin/python bench/shedding.py [--artifacts-dir artifacts-1m] [--factor 2] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.latency_1m import ensure_artifacts  # noqa: E402
from bench.served import wait_compiled  # noqa: E402
from services.common.artifacts import open_current  # noqa: E402
from services.common.fusion import FusionParams  # noqa: E402
from services.loadgen import LoadConfig, LoadResult, run  # noqa: E402
from services.local import LocalPlatform  # noqa: E402

TOTAL_BUDGET_MS = 100.0


def measure(
    root: Path, users: list[str], gateway_args: list[str], rate: float | None, args: Any
) -> dict[str, Any]:
    """Start the platform with `gateway_args`; capacity when `rate` is None, else the open loop."""
    with tempfile.TemporaryDirectory() as work:
        platform = LocalPlatform.on_free_ports(
            root,
            Path(work) / "logs",
            event_log=Path(work) / "events.jsonl",
            extra_args={"gateway": gateway_args},
        )
        with platform:
            wait_compiled(platform)
            gateway = platform.address("gateway")
            run(LoadConfig(gateway, users, max_requests=300, duration_s=60))  # warm-up
            if rate is None:
                closed = run(
                    LoadConfig(
                        gateway,
                        users,
                        concurrency=args.concurrency,
                        duration_s=args.seconds,
                        max_requests=100_000,
                    )
                )
                return {"capacity_rps": closed.answered / closed.elapsed_s, "closed_loop": closed.to_json()}
            result: LoadResult = run(
                LoadConfig(
                    gateway, users, mode="open", rps=rate, duration_s=args.seconds, max_requests=100_000
                )
            )
            shed = result.errors.get("RESOURCE_EXHAUSTED", 0)
            return {
                "rate_rps": rate,
                "requests": result.requests,
                "answered": result.answered,
                "shed": shed,
                "shed_share": shed / max(1, result.requests),
                "other_errors": {k: v for k, v in result.errors.items() if k != "RESOURCE_EXHAUSTED"},
                "degraded": result.degraded,
                "admitted_latency_ms": result.ok_latency_ms,
                "shed_latency_ms": result.shed_latency_ms,
                "all_latency_ms": result.latency_ms,
            }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts-1m"))
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop in flight, for the capacity")
    parser.add_argument("--factor", type=float, default=2.0, help="open-loop rate as a multiple of capacity")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--limit",
        default="",
        help="gateway flags of the limited side, e.g. '--max-in-flight 8' (default: its defaults)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shedding.json")
    args = parser.parse_args()
    ensure_artifacts(args.artifacts_dir, args.items, FusionParams().candidates)
    users = json.loads(open_current(args.artifacts_dir).file("user_ids.json").read_text())[:2000]
    # The platform's capacity, not the admission limit's: no limit, and only answered requests count.
    capacity = measure(args.artifacts_dir, users, ["--max-in-flight", "0"], None, args)
    rate = capacity["capacity_rps"] * args.factor
    result = {
        "capacity": capacity,
        "factor": args.factor,
        "limit_on": measure(args.artifacts_dir, users, args.limit.split(), rate, args),
        "limit_flags": args.limit or "defaults",
        "limit_off": measure(args.artifacts_dir, users, ["--max-in-flight", "0"], rate, args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"capacity {capacity['capacity_rps']:.0f} req/s (closed loop, {args.concurrency} in flight); "
        f"open loop at {rate:.0f} req/s for {args.seconds:.0f} s"
    )
    print(
        f"{'':>10} {'answered':>9} {'shed':>7} {'other errors':>13} {'degraded':>9} {'OK p50':>8} {'OK p99':>8}"
        f" {'shed p50':>9} {'shed p99':>9}"
    )
    for name in ("limit_on", "limit_off"):
        r = result[name]
        lat, shed = r["admitted_latency_ms"], r["shed_latency_ms"]
        nan = float("nan")
        print(
            f"{name:>10} {r['answered']:>9} {r['shed_share']:>6.1%} {sum(r['other_errors'].values()):>13} "
            f"{r['degraded']:>9} {lat.get('p50', nan):>8.1f} {lat.get('p99', nan):>8.1f}"
            f" {shed.get('p50', nan):>9.1f} {shed.get('p99', nan):>9.1f}"
        )
    print(f"(total budget {TOTAL_BUDGET_MS:.0f} ms; written {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
