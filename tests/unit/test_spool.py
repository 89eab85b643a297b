"""The local spool: in order, bounded, at least once across crashes, compacted while in use."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.spool import Record, Spool, SpoolFull, SpoolInUse


def batch(start: int, n: int) -> list[Record]:
    return [{"event_id": f"e{i}"} for i in range(start, start + n)]


def drain_all(spool: Spool, max_records: int = 1000) -> list[str]:
    got: list[str] = []

    async def deliver(records: list[Record]) -> None:
        got.extend(r["event_id"] for r in records)

    asyncio.run(spool.drain(deliver, max_records))
    return got


def test_batches_are_delivered_in_order_and_the_file_emptied(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", max_bytes=1 << 20)
    spool.append(batch(0, 3))
    spool.append(batch(3, 2))
    assert spool.pending and spool.backlog_bytes > 0
    assert drain_all(spool, max_records=2) == [f"e{i}" for i in range(5)]
    assert not spool.pending
    assert (tmp_path / "s.jsonl").stat().st_size == 0


def test_a_full_spool_refuses_the_batch_and_keeps_what_it_has(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", max_bytes=60)
    spool.append(batch(0, 2))
    with pytest.raises(SpoolFull, match="full"):
        spool.append(batch(2, 5))
    assert drain_all(spool) == ["e0", "e1"]


def test_a_failed_delivery_keeps_the_batch_for_the_next_drain(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", max_bytes=1 << 20)
    spool.append(batch(0, 1))
    spool.append(batch(1, 1))

    async def fail_second(records: list[Record]) -> None:
        if records[0]["event_id"] == "e1":
            raise ConnectionError("store down")

    with pytest.raises(ConnectionError):
        asyncio.run(spool.drain(fail_second, max_records=1))
    assert drain_all(spool) == ["e1"]


def test_reopened_it_resumes_after_what_was_delivered_and_cuts_a_torn_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path, max_bytes=1 << 20)
    for i in range(4):
        spool.append(batch(i, 1))

    async def deliver_two(records: list[Record]) -> None:
        if records[0]["event_id"] == "e2":
            raise ConnectionError

    with pytest.raises(ConnectionError):
        asyncio.run(spool.drain(deliver_two, max_records=1))
    spool.close()
    with path.open("ab") as f:
        f.write(b'[{"event_id":"torn"')  # a crash in the middle of an append
    again = Spool(path, max_bytes=1 << 20)
    assert drain_all(again) == ["e2", "e3"]


def test_compaction_while_appending_keeps_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", max_bytes=4000)
    got: list[str] = []
    next_id = 0

    async def deliver(records: list[Record]) -> None:
        nonlocal next_id
        got.extend(r["event_id"] for r in records)
        if next_id < 300:  # appends keep arriving while the spool drains
            spool.append(batch(next_id, 5))
            next_id += 5

    spool.append(batch(next_id, 5))
    next_id += 5
    asyncio.run(spool.drain(deliver, max_records=5))
    assert got == [f"e{i}" for i in range(next_id)]
    assert (tmp_path / "s.jsonl").stat().st_size == 0


def test_one_process_per_spool_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path, max_bytes=1 << 20)
    with pytest.raises(SpoolInUse, match="in use"):
        Spool(path, max_bytes=1 << 20)
    spool.close()
    Spool(path, max_bytes=1 << 20).close()
