"""The gateway's load shedding (services.gateway.admission), step by step on one event loop."""

from __future__ import annotations

import asyncio

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


def test_the_limit_shrinks_when_admitted_requests_are_slow_and_grows_back_when_fast() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=8, max_queued=100, queue_ms=10_000, target_ms=20, window=10)

        async def request(seconds: float) -> None:
            async with admission.admit():
                await asyncio.sleep(seconds)

        await asyncio.gather(*(request(0.04) for _ in range(10)))  # slower than the target
        assert admission.limit == 7
        for _ in range(3):
            await asyncio.gather(*(request(0.04) for _ in range(10)))
        assert admission.limit < 7
        shrunk = admission.limit
        # Fast again, and more requests than slots: the limit climbs back, one per window.
        for _ in range(20):
            await asyncio.gather(*(request(0.001) for _ in range(10)))
        assert shrunk < admission.limit <= 8
        assert admission.in_flight == 0

    asyncio.run(main())


def test_the_limit_holds_without_a_target_and_never_exceeds_it_in_flight() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=3, max_queued=100, queue_ms=10_000)
        peak = 0

        async def request() -> None:
            nonlocal peak
            async with admission.admit():
                peak = max(peak, admission.in_flight)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(request() for _ in range(30)))
        assert peak == 3 and admission.limit == 3 and admission.in_flight == 0

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
