"""Two commits' platforms measured in one run: each started by its own `recsys up` on its own artifacts,
then one Recommend at a time, alternating between the two gateways, so that whatever the shared
machine does to one does it to the other. Reports each side's latency percentiles, the CPU
milliseconds every process spent per request (from /proc), resident memory, and the ratios.

    git worktree add /tmp/before <commit before>          # the other side, with its own `recsys synth`
    .venv/bin/python bench/latency_side_by_side.py --before /tmp/before \\
        --before-artifacts artifacts-1m-before --after-artifacts artifacts-1m [--requests 2000]

The experiments file is empty on both sides (no arm changes the pipeline) and each gateway serves its
own defaults (the commit before: 500 candidates; this one: as many as the version was trained with).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procfs import cpu_seconds, rss_mib  # noqa: E402
from recsys.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from services.local import free_port  # noqa: E402


@dataclass
class Side:
    name: str
    tree: Path
    artifacts: Path
    work: Path
    port: int = 0
    pids: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    latencies: list[float] = field(default_factory=list)
    degraded: int = 0

    def start(self, experiments: Path) -> None:
        self.port = free_port()
        while any(not _free(self.port + i) for i in range(4)):
            self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": f"{self.tree}{os.pathsep}{self.tree / 'protos'}",
            "RECSYS_EXPERIMENTS": str(experiments),
        }
        command = [sys.executable, "-m", "services.cli", "up", "--artifacts-dir", str(self.artifacts)]
        command += ["--port", str(self.port), "--work-dir", str(self.work)]
        self.process = subprocess.Popen(command, cwd=self.tree, env=env, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        for line in self.process.stdout:
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "pid":
                self.pids[parts[0]] = int(parts[3])
            if line.startswith("logs in"):
                break
        if "gateway" not in self.pids:
            raise RuntimeError(f"{self.name}: `recsys up` did not start (see {self.work / 'logs'})")
        deadline = time.monotonic() + 900
        log = self.work / "logs" / "ranking.log"
        while "ranker compiled" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the ranker did not compile")
            time.sleep(1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def memory_mib(self) -> dict[str, float]:
        return {name: rss_mib(pid) for name, pid in self.pids.items()}


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)} | {
        "max": round(float(a.max()), 3)
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the commit before")
    parser.add_argument("--before-artifacts", type=Path, required=True)
    parser.add_argument("--after-artifacts", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000, help="per side")
    parser.add_argument("--warmup", type=int, default=300, help="per side, not measured")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency_side_by_side.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        experiments = Path(tmp) / "experiments.yaml"
        experiments.write_text("experiments: []\n")
        sides = [
            Side("before", args.before.resolve(), args.before_artifacts.resolve(), Path(tmp) / "before"),
            Side("after", ROOT, args.after_artifacts.resolve(), Path(tmp) / "after"),
        ]
        try:
            for side in sides:
                side.start(experiments)
            users = [f"u{i}" for i in range(2000)]
            channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in sides]
            stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]

            def ask(i: int, side: int) -> tuple[float, bool]:
                start = time.perf_counter()
                reply = stubs[side].Recommend(
                    gateway_pb2.RecommendRequest(user_id=users[i % len(users)], k=10), timeout=5
                )
                return (time.perf_counter() - start) * 1000, reply.degraded

            for i in range(args.warmup):
                for which in range(2):
                    ask(i, which)
            before = [s.cpu() for s in sides]
            for i in range(args.requests):
                for which in (0, 1) if i % 2 == 0 else (1, 0):  # ABBA: neither always goes first
                    ms, degraded = ask(i, which)
                    sides[which].latencies.append(ms)
                    sides[which].degraded += degraded
            after = [s.cpu() for s in sides]
            rss = [s.memory_mib() for s in sides]
            for c in channels:
                c.close()
        finally:
            for side in sides:
                side.stop()
    result: dict[str, Any] = {
        "benchmark": "latency_side_by_side",
        "requests_per_side": args.requests,
        "sides": {},
    }
    for s, b, a, r in zip(sides, before, after, rss, strict=True):
        cpu = {k: round((a[k] - b[k]) * 1000 / args.requests, 3) for k in a}
        result["sides"][s.name] = {
            "artifacts": s.artifacts.name,
            "latency_ms": percentiles(s.latencies),
            "degraded": s.degraded,
            "cpu_ms_per_request": cpu | {"sum": round(sum(cpu.values()), 3)},
            "rss_mib": {k: round(v, 1) for k, v in r.items()},
        }
    b, a = result["sides"]["before"], result["sides"]["after"]
    result["ratio_after_over_before"] = {
        "p50": round(a["latency_ms"]["p50"] / b["latency_ms"]["p50"], 3),
        "p99": round(a["latency_ms"]["p99"] / b["latency_ms"]["p99"], 3),
        "cpu_ms_per_request": round(a["cpu_ms_per_request"]["sum"] / b["cpu_ms_per_request"]["sum"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.requests} requests per side, one at a time, alternating")
    print(f"{'':8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'CPU ms/req':>12}{'degraded':>10}")
    for name, s in result["sides"].items():
        lat = s["latency_ms"]
        print(
            f"{name:8}{lat['p50']:>8.2f}{lat['p95']:>8.2f}{lat['p99']:>8.2f}{lat['max']:>8.2f}"
            f"{s['cpu_ms_per_request']['sum']:>12.2f}{s['degraded']:>10}"
        )
        print(
            "        CPU ms: "
            + "  ".join(f"{k}={v:.2f}" for k, v in s["cpu_ms_per_request"].items() if k != "sum")
        )
        print("        RSS MiB: " + "  ".join(f"{k}={v:.0f}" for k, v in s["rss_mib"].items()))
    ratio = result["ratio_after_over_before"]
    print(
        f"after / before: p50 {ratio['p50']:.3f}  p99 {ratio['p99']:.3f}  CPU per request {ratio['cpu_ms_per_request']:.3f}"
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
