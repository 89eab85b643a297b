"""The learning loop on real fits: a base file and then the platform's own events (the embedded store's
log), trained incrementally, judged by the quality gate through the services' handlers, rolled back;
and `recsys retrain` as a subprocess."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from services.cli import main
from services.common import artifacts
from services.features.embedded import EmbeddedConfig, EmbeddedStore
from services.features.store import Event, EventType
from services.trainer import events
from tests.support import BUNDLED_DATA, REPO, TEST_SETTINGS

USERS = 200  # of ml-latest-small: a few seconds a fit
SETTINGS = [a for s in (*TEST_SETTINGS, "protocol.windows=1", "ranker.seeds=1") for a in ("--set", s)]
#: A pipeline the gate must refuse next to the default one: the content source alone.
BAD = ["--sources", "content"]
DAY = 86_400


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[Event]]]:
    """USERS' ratings but each one's last four as a MovieLens directory; those four come back later as
    events, two a batch, each batch a day after everything before it (users returning to rate more)."""
    with (BUNDLED_DATA / "ratings.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["userId"]) <= USERS]
    by_user: dict[str, list[dict[str, str]]] = {}
    for r in sorted(rows, key=lambda r: int(r["timestamp"])):
        by_user.setdefault(r["userId"], []).append(r)
    base = tmp_path_factory.mktemp("loop") / "base"
    base.mkdir()
    shutil.copy(BUNDLED_DATA / "movies.csv", base / "movies.csv")
    kept = [r for user_rows in by_user.values() for r in user_rows[:-4]]
    with (base / "ratings.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["userId", "movieId", "rating", "timestamp"])
        writer.writeheader()
        writer.writerows(kept)
    end = max(int(r["timestamp"]) for r in kept)

    def batch(which: slice, day: int) -> list[Event]:
        out = []
        for n, user_rows in enumerate(by_user.values()):
            for i, r in enumerate(user_rows[-4:][which]):
                at = (end + day * DAY + n * 10 + i) * 1000
                out.append(Event(r["userId"], r["movieId"], EventType.RATING, at, float(r["rating"])))
        return out

    return base, [batch(slice(0, 2), 1), batch(slice(2, 4), 2)]


def append(log: Path, batch: Sequence[Event], **config: Any) -> EmbeddedStore:
    store = EmbeddedStore(EmbeddedConfig(event_log=log, **config))

    async def run() -> None:
        for start in range(0, len(batch), 500):
            await store.append_events(batch[start : start + 500])
        await store.close()

    asyncio.run(run())
    return store


def train(*argv: str) -> artifacts.ArtifactVersion:
    assert main(["train", "--no-progress", *SETTINGS, *argv]) == 0
    root = Path(argv[argv.index("--out") + 1])
    return artifacts.open_version(root, artifacts.version_names(root)[-1])


def test_gate_incremental_reads_and_rollback(
    split: tuple[Path, list[list[Event]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, (batch1, batch2) = split
    out, log = tmp_path / "artifacts", tmp_path / "events.jsonl"
    common = ["--data", str(base), "--out", str(out)]
    # v1: a poor pipeline on the base file, promoted (no gate).
    v1 = train(*common, *BAD)
    assert artifacts.current_version_name(out) == v1.version

    # v2: the default pipeline on base + events, through the gate: better than v1, promoted.
    append(log, batch1)
    v2 = train(*common, "--events", str(log), "--gate")
    gate = v2.manifest["gate"]
    assert gate["passed"] is True and gate["serving_version"] == v1.version, gate
    assert gate["new"] > gate["serving"] and gate["slice"]["users"] > 10
    assert gate["slice"]["after"] == v1.manifest["data"]["last"]
    assert artifacts.current_version_name(out) == v2.version
    read2 = v2.manifest["data"]["events"]
    assert read2["since"] == "" and read2["counts"]["interactions"] == len(batch1)
    # Promoted: the log is consumed through v2's watermark.
    assert (tmp_path / "events.jsonl.consumed").read_text() == read2["watermark"] == str(len(batch1))
    assert "gate: passed: ndcg@10" in capsys.readouterr().out

    # New events, one of them re-sent under an id v2 already trained on (after the store's window).
    append(log, batch2)
    resent = json.loads(log.read_text().splitlines()[0])
    with log.open("a") as f:
        f.write(json.dumps({**resent, "seq": len(batch1) + len(batch2) + 1}, separators=(",", ":")) + "\n")
    # v3: the poor pipeline again, incrementally: only the new events read, v2's interactions kept;
    # refused by the gate, CURRENT unchanged, nothing marked consumed.
    v3 = train(*common, "--events", str(log), "--gate", *BAD)
    read3 = v3.manifest["data"]["events"]
    assert read3["since"] == read2["watermark"] and read3["earlier"] == v2.version
    assert read3["counts"]["read"] == len(batch2) + 1 and read3["counts"]["duplicates"] == 1
    assert read3["counts"]["interactions"] == len(batch2)
    total = v2.manifest["training"]["final_fit"]["interactions"] + len(batch2)
    assert v3.manifest["training"]["final_fit"]["interactions"] == total
    kept = events.Interactions.load(v3.file(events.INTERACTIONS_FILE))
    assert len(kept.log) == total and len(kept.seen_ids()) == len(batch1) + len(batch2)
    gate = v3.manifest["gate"]
    assert gate["passed"] is False and gate["serving_version"] == v2.version
    assert gate["new"] < gate["serving"] - gate["tolerance"] and gate["reason"].startswith("refused: ndcg@10")
    # refused because confidently worse: the whole 95% interval of the paired difference below -tolerance
    assert gate["difference"]["ci95"][1] < -gate["tolerance"], gate
    assert artifacts.current_version_name(out) == v2.version
    assert (tmp_path / "events.jsonl.consumed").read_text() == read2["watermark"]
    printed = capsys.readouterr().out
    assert "gate: refused" in printed and "(not promoted)" in printed

    # Retention may now trim the log up to v2's watermark, never past it.
    store = append(log, [], events_max_len=1)
    dropped = asyncio.run(trim(store))
    assert dropped == len(batch1)
    assert events.read(str(log)).counts["read"] == len(batch2) + 1

    # The operator's side: list, roll back to v1, nothing further back.
    assert main(["versions", "--artifacts-dir", str(out)]) == 0
    states = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]}
    assert states == {v1.version: "previous", v2.version: "CURRENT", v3.version: "refused-by-gate"}
    assert main(["rollback", "--artifacts-dir", str(out)]) == 0
    assert artifacts.current_version_name(out) == v1.version
    assert main(["rollback", "--artifacts-dir", str(out)]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


async def trim(store: EmbeddedStore) -> int:
    import time

    fresh = EmbeddedStore(store.config)
    try:
        return await fresh.trim_events(time.time())
    finally:
        await fresh.close()


def test_the_gate_refuses_when_nothing_is_newer_than_the_serving_version(
    split: tuple[Path, list[list[Event]]], tmp_path: Path
) -> None:
    base, _ = split
    out = tmp_path / "artifacts"
    v1 = train("--data", str(base), "--out", str(out), *BAD)
    v2 = train("--data", str(base), "--out", str(out), "--gate", "--keep", "1")
    assert v2.manifest["gate"]["passed"] is False
    assert "nothing to compare on" in v2.manifest["gate"]["reason"]
    assert artifacts.current_version_name(out) == v1.version
    # Retention ran after publishing: v1 (CURRENT) and v2 (the newest) stay.
    assert artifacts.version_names(out) == [v1.version, v2.version]
    assert not [p for p in out.iterdir() if p.name.startswith(".gate-")]


def test_retrain_rounds_as_a_subprocess(split: tuple[Path, list[list[Event]]], tmp_path: Path) -> None:
    base, (batch1, _) = split
    out, log = tmp_path / "artifacts", tmp_path / "events.jsonl"
    append(log, batch1)
    argv = ["--every", "1s", "--rounds", "2", "--data", str(base), "--events", str(log), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "retrain", "--no-progress", *SETTINGS, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (version,) = artifacts.version_names(out)
    assert f"retrain round 1: {version} promoted" in done.stdout
    assert "gate: passed: no serving version to compare with" in done.stdout
    assert (
        f"retrain round 2: nothing to learn: no new clicks or ratings in events.jsonl after {len(batch1)}"
        in (done.stdout)
    )
    assert artifacts.current_version_name(out) == version
