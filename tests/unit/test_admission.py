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
