"""Load shedding: at most `max_in_flight` Recommends run at once, up to `max_queued` more wait at most
`queue_ms` for a slot, and the rest are refused at once (Overloaded -> RESOURCE_EXHAUSTED). Past its
capacity a gateway that admits everything makes every request late; this one keeps the admitted ones
within their budget and tells the others to back off. Feedback is never shed (losing an event costs
more than answering it).

A full queue is the sign of overload: callers in a closed loop (each sends its next request when the
last is answered) never fill it while they fit in the slots and the queue, whatever their pace, while
load offered faster than it is served fills it at once. So for `OVERLOAD_S` after a refusal at a full
queue, a newly queued request waits at most `overload_queue_ms`: the queue, full by then, would
otherwise add its whole drain time to every admitted request. Like CoDel, a queue that stands is cut
short; unlike it, a queue that stands only because of its callers' own concurrency is left alone.

The limit is fixed, not adapted to latency or to the event loop's lag: both limits were tried
(bench/shedding.py, bench/chaos.py) and shed during the CPU spikes of a chaos run, which a fixed limit
does not, without keeping the admitted p99 within budget more reliably."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.rpc import Overloaded


class Admission:
    #: How long the queue's waits stay short after a refusal at a full queue.
    OVERLOAD_S = 0.1

    def __init__(
        self, max_in_flight: int, max_queued: int, queue_ms: float, overload_queue_ms: float | None = None
    ) -> None:
        """max_in_flight 0 admits everything; overload_queue_ms None keeps queue_ms also in overload."""
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.queue_s = queue_ms / 1000
        self.overload_queue_s = self.queue_s if overload_queue_ms is None else overload_queue_ms / 1000
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._refused_at = -float("inf")

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.max_in_flight <= 0:
            yield
            return
        if self.in_flight >= self.max_in_flight or self._waiters:
            await self._wait_for_slot()  # the slot is counted in in_flight when it is granted
        else:
            self.in_flight += 1
        try:
            yield
        finally:
            self._release()

    async def _wait_for_slot(self) -> None:
        now = time.perf_counter()
        if len(self._waiters) >= self.max_queued:
            self._refused_at = now
            raise Overloaded(
                f"gateway: overloaded ({self.in_flight} in flight, {len(self._waiters)} queued); retry later"
            )
        wait_s = self.overload_queue_s if now - self._refused_at < self.OVERLOAD_S else self.queue_s
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await asyncio.wait_for(asyncio.shield(slot), wait_s)
        except TimeoutError:
            if slot.done():  # granted just as the wait ran out: take it
                return
            raise Overloaded(
                f"gateway: overloaded (no slot within {wait_s * 1000:g} ms); retry later"
            ) from None
        except asyncio.CancelledError:
            if slot.done():  # granted, but the caller is gone: give the slot back
                self._release()
            raise
        finally:
            if not slot.done():
                slot.cancel()
                self._waiters.remove(slot)

    def _release(self) -> None:
        """A slot comes free: the oldest waiter gets it."""
        self.in_flight -= 1
        if self._waiters and self.in_flight < self.max_in_flight:
            self.in_flight += 1
            self._waiters.popleft().set_result(None)
