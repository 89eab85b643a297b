"""Load shedding: at most `limit` Recommends run at once, up to `max_queued` more wait at most `queue_ms`
for a slot, and the rest are refused at once (Overloaded -> RESOURCE_EXHAUSTED). Past its capacity a
gateway that admits everything makes every request late; this one keeps the admitted ones within their
budget and tells the others to back off in well under a millisecond. Feedback is never shed (losing an
event costs more than answering it).

The limit adapts (AIMD on latency, when `target_ms` is set): every `window` admitted requests, if the
slowest tenth of them took longer than `target_ms`, the limit shrinks by a tenth (at least one);
otherwise, if requests had to wait for a slot, it grows by one, up to `max_in_flight`. How many requests
a machine can run at once within the budget depends on its speed and on what else it runs (the
backends, here, share its cores): a fixed number is either too low for a fast machine or too high for a
slow one."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.rpc import Overloaded


class Admission:
    def __init__(
        self, max_in_flight: int, max_queued: int, queue_ms: float, target_ms: float = 0.0, window: int = 50
    ) -> None:
        """max_in_flight 0 admits everything; target_ms 0 keeps the limit at max_in_flight."""
        self.max_in_flight = max_in_flight
        self.limit = max_in_flight
        self.max_queued = max_queued
        self.queue_s = queue_ms / 1000
        self.target_s = target_ms / 1000
        self.window = window
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._latencies: list[float] = []
        self._waited = False

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.max_in_flight <= 0:
            yield
            return
        if self.in_flight >= self.limit or self._waiters:
            await self._wait_for_slot()  # the slot is counted in in_flight when it is granted
        else:
            self.in_flight += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._release()
            self._completed(time.perf_counter() - started)

    async def _wait_for_slot(self) -> None:
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(
                f"gateway: overloaded ({self.in_flight} in flight, {len(self._waiters)} queued); retry later"
            )
        self._waited = True
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await asyncio.wait_for(asyncio.shield(slot), self.queue_s)
        except TimeoutError:
            if slot.done():  # granted just as the wait ran out: take it
                return
            raise Overloaded(
                f"gateway: overloaded (no slot within {self.queue_s * 1000:g} ms); retry later"
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
        """A slot comes free: the oldest waiter gets it, while the limit allows."""
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.limit:
            self.in_flight += 1
            self._waiters.popleft().set_result(None)

    def _completed(self, seconds: float) -> None:
        if self.target_s <= 0:
            return
        self._latencies.append(seconds)
        if len(self._latencies) < self.window:
            return
        slow = sorted(self._latencies)[int(len(self._latencies) * 0.9)]
        if slow > self.target_s:
            self.limit = max(1, min(self.limit - 1, int(self.limit * 0.9)))
        elif self._waited and self.limit < self.max_in_flight:
            self.limit += 1
        self._latencies.clear()
        self._waited = False
