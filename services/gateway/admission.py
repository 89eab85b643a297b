"""Load shedding: at most `max_in_flight` Recommends run at once, up to `max_queued` more wait for a
slot, and the rest are refused at once (Overloaded -> RESOURCE_EXHAUSTED). Past its capacity a gateway
that admits everything makes every request late; this one keeps the admitted ones within their budget
and tells the others to back off. Feedback is never shed (losing an event costs more than answering it).

The queue tells a burst from overload the way CoDel and Facebook's adaptive LIFO do: while it drains now
and then, a request waits up to `queue_ms` for a slot, first come first served, so a short spike (a
replica restarting, a GC pause) is absorbed instead of shed. Once it has not drained for `standing_ms`,
the load is more than the slots can take: a request then waits at most `standing_queue_ms`, and the
newest waiter gets the next slot. Under overload the requests admitted are the fresh ones, which still
have their whole budget; the old ones, which would be late anyway, are the ones shed.

The limit is a number of requests, not a latency: past the point where the platform's processes are all
busy, more in flight adds latency and no throughput (bench/shedding.py measures both), and a request
waiting on a slow backend is the budgets' business (they degrade it), not a reason to shed others."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.rpc import Overloaded


class Admission:
    def __init__(
        self,
        max_in_flight: int,
        max_queued: int,
        queue_ms: float,
        standing_queue_ms: float | None = None,
        standing_ms: float = 100.0,
    ) -> None:
        """max_in_flight 0 admits everything; standing_queue_ms None: the same wait as queue_ms."""
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.queue_s = queue_ms / 1000
        self.standing_queue_s = self.queue_s if standing_queue_ms is None else standing_queue_ms / 1000
        self.standing_s = standing_ms / 1000
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: since when the queue has held waiters, gaps shorter than standing_ms bridged (None: not yet)
        self._busy_since: float | None = None
        #: since when the queue has been empty (None: it holds a waiter now)
        self._empty_since: float | None = -math.inf

    @property
    def standing(self) -> bool:
        """The queue has held waiters for `standing_ms`, and has not stayed empty as long since: overload,
        not a burst. Under overload it drains for moments between arrivals; those do not count."""
        now = time.perf_counter()
        if self._busy_since is None or (
            self._empty_since is not None and now - self._empty_since > self.standing_s
        ):
            return False
        return now - self._busy_since > self.standing_s

    def _queue_changed(self) -> None:
        now = time.perf_counter()
        if not self._waiters:
            if self._empty_since is None:
                self._empty_since = now
        elif self._empty_since is not None:
            if now - self._empty_since > self.standing_s:  # a new busy spell, not a gap in one
                self._busy_since = now
            self._empty_since = None

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
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(
                f"gateway: overloaded ({self.in_flight} in flight, {len(self._waiters)} queued); retry later"
            )
        wait_s = self.standing_queue_s if self.standing else self.queue_s
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        self._queue_changed()
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
                self._queue_changed()

    def _release(self) -> None:
        """A slot comes free: a waiter gets it (the oldest, or under overload the newest)."""
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.max_in_flight:
            self.in_flight += 1
            slot = self._waiters.pop() if self.standing else self._waiters.popleft()
            slot.set_result(None)
        self._queue_changed()
