"""The gateway's load shedding (services.gateway.admission), step by step on one event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.rpc import Overloaded
from services.gateway.admission import Admission


def test_in_flight_then_queued_then_shed_at_once() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=1, max_queued=1, queue_ms=10_000)
        release = asyncio.Event()
        order: list[str] = []

        async def request(name: str) -> None:
            async with admission.admit():
                order.append(f"{name} runs")
                if name == "first":
                    await release.wait()

        first = asyncio.create_task(request("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(request("second"))  # waits for the slot
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match=r"1 in flight, 1 queued"):
            await request("third")  # neither a slot nor room in the queue: refused without waiting
        assert order == ["first runs"]
        release.set()
        await asyncio.gather(first, second)
        assert order == ["first runs", "second runs"] and admission.in_flight == 0

    asyncio.run(main())


def test_a_queued_request_is_shed_when_no_slot_frees_in_time() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=1, max_queued=5, queue_ms=20)
        hold = asyncio.Event()

        async def holder() -> None:
            async with admission.admit():
                await hold.wait()

        task = asyncio.create_task(holder())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="no slot within 20 ms"):
            async with admission.admit():
                pass
        hold.set()
        await task
        async with admission.admit():  # the slot is free again
            assert admission.in_flight == 1

    asyncio.run(main())


def test_zero_admits_everything() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=0, max_queued=0, queue_ms=1)
        async with admission.admit(), admission.admit(), admission.admit():
            pass

    asyncio.run(main())


def test_a_burst_waits_first_come_first_served() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=1, max_queued=10, queue_ms=10_000, standing_queue_ms=1)
        release = asyncio.Event()
        order: list[str] = []

        async def request(name: str, hold: bool = False) -> None:
            async with admission.admit():
                order.append(name)
                if hold:
                    await release.wait()

        tasks = [asyncio.create_task(request("holder", hold=True))]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request(f"waiter {i}")) for i in range(3)]
        await asyncio.sleep(0.01)  # well under standing_ms (100): a burst, each with the long wait
        release.set()
        await asyncio.gather(*tasks)
        assert order == ["holder", "waiter 0", "waiter 1", "waiter 2"]

    asyncio.run(main())


def test_a_standing_queue_gets_the_short_wait_and_newest_first() -> None:
    async def main() -> None:
        admission = Admission(
            max_in_flight=1, max_queued=10, queue_ms=10_000, standing_queue_ms=30, standing_ms=50
        )
        release = asyncio.Event()
        order: list[str] = []

        async def request(name: str, hold: bool = False) -> None:
            async with admission.admit():
                order.append(name)
                if hold:
                    await release.wait()

        holder = asyncio.create_task(request("holder", hold=True))
        await asyncio.sleep(0)
        # A burst: the queue has not stood long, so waiters keep the long wait and their order.
        burst = [asyncio.create_task(request(f"burst {i}")) for i in range(2)]
        await asyncio.sleep(0)
        assert not admission.standing
        await asyncio.sleep(0.06)  # the queue has now held waiters for longer than standing_ms
        assert admission.standing
        # A waiter that comes while the queue stands waits only standing_queue_ms.
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="no slot within 30 ms"):
            await request("shed")
        assert time.perf_counter() - started < 1.0
        late = asyncio.create_task(request("late"))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, late, *burst)
        # The newest waiter got the freed slot first; the queue still stood, so newest first after it.
        assert order == ["holder", "late", "burst 1", "burst 0"]
        assert admission.in_flight == 0

    asyncio.run(main())


def test_the_queue_counts_as_standing_until_it_stays_empty() -> None:
    async def main() -> None:
        admission = Admission(
            max_in_flight=1, max_queued=10, queue_ms=10_000, standing_queue_ms=10_000, standing_ms=40
        )
        hold = asyncio.Event()

        async def request(hold_for: asyncio.Event | None = None) -> None:
            async with admission.admit():
                if hold_for is not None:
                    await hold_for.wait()

        holder = asyncio.create_task(request(hold))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(request())
        await asyncio.sleep(0.05)
        assert admission.standing
        hold.set()
        await asyncio.gather(holder, waiter)  # the queue drains...
        assert admission.standing  # ...for a moment: under overload that happens between arrivals
        await asyncio.sleep(0.05)
        assert not admission.standing  # empty for longer than standing_ms: the overload is over
        assert admission.in_flight == 0

    asyncio.run(main())


def test_the_limit_is_never_exceeded() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=3, max_queued=100, queue_ms=10_000)
        peak = 0

        async def request() -> None:
            nonlocal peak
            async with admission.admit():
                peak = max(peak, admission.in_flight)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(request() for _ in range(30)))
        assert peak == 3 and admission.in_flight == 0

    asyncio.run(main())


def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=1, max_queued=5, queue_ms=10_000)
        hold = asyncio.Event()

        async def holder() -> None:
            async with admission.admit():
                await hold.wait()

        async def waiter() -> None:
            async with admission.admit():
                pass

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        queued = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        queued.cancel()
        hold.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert admission.in_flight == 0
        async with admission.admit():  # the slot is free again
            assert admission.in_flight == 1

    asyncio.run(main())
