"""The gateway's load shedding (services.gateway.admission), step by step on one event loop."""

from __future__ import annotations

import asyncio

import pytest

from services.common.rpc import Overloaded
from services.gateway.admission import Admission
from services.gateway.service import Config


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


def test_the_default_limit_serves_a_closed_loop_of_eight_callers_without_a_refusal() -> None:
    """A product backend with 8 threads, each sending its next Recommend when the last one is answered,
    offers no more than the platform serves: the default limit queues half of them for about one
    service time and refuses none. A ninth at the same moment finds the queue full and is refused at
    once, without waiting."""
    config = Config()

    async def main() -> None:
        admission = Admission(config.max_in_flight, config.max_queued, config.queue_ms)
        peak = 0

        async def caller() -> None:
            nonlocal peak
            for _ in range(25):
                async with admission.admit():
                    peak = max(peak, admission.in_flight)
                    await asyncio.sleep(0.01)  # the service time

        await asyncio.gather(*(caller() for _ in range(8)))  # an Overloaded here fails the test
        assert peak == config.max_in_flight and admission.in_flight == 0

        hold = asyncio.Event()

        async def held() -> None:
            async with admission.admit():
                await hold.wait()

        eight = [asyncio.create_task(held()) for _ in range(8)]
        await asyncio.sleep(0)
        # The queue-full refusal (not "no slot within"): told without waiting.
        with pytest.raises(Overloaded, match="4 in flight, 4 queued"):
            async with admission.admit():
                pass
        hold.set()
        await asyncio.gather(*eight)

    asyncio.run(main())


def test_after_a_refusal_at_a_full_queue_the_queue_waits_only_briefly() -> None:
    async def main() -> None:
        admission = Admission(max_in_flight=1, max_queued=1, queue_ms=10_000, overload_queue_ms=5)
        hold = asyncio.Event()

        async def held() -> None:
            async with admission.admit():
                await hold.wait()

        running = asyncio.create_task(held())
        queued = asyncio.create_task(held())  # waits up to 10 s: no overload seen yet
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="1 in flight, 1 queued"):
            async with admission.admit():
                pass
        hold.set()
        await asyncio.gather(running, queued)  # the one queued before the refusal kept its wait

        hold.clear()
        running = asyncio.create_task(held())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="no slot within 5 ms"):  # within OVERLOAD_S of the refusal
            async with admission.admit():
                pass
        await asyncio.sleep(Admission.OVERLOAD_S)
        queued = asyncio.create_task(held())  # the overload is over: the full wait again
        await asyncio.sleep(0.02)
        assert not queued.done()
        hold.set()
        await asyncio.gather(running, queued)
        assert admission.in_flight == 0

    asyncio.run(main())
