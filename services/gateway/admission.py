"""Load shedding: at most `limit` Recommends run at once, up to `max_queued` more wait at most `queue_ms`
for a slot, and the rest are refused at once (Overloaded -> RESOURCE_EXHAUSTED). Past its capacity a
gateway that admits everything makes every request late; this one keeps the admitted ones within their
budget and tells the others to back off. Feedback is never shed (losing an event costs more than
answering it).

A full queue is the sign of overload: callers in a closed loop (each sends its next request when the
last is answered) never fill it when they fit in the slots and the queue, whatever their pace, while
load offered faster than it is served fills it at once. So for `OVERLOAD_S` after a refusal at a full
queue, a newly queued request waits at most `overload_queue_ms`: the queue, always full by then, would
otherwise add its whole drain time to every admitted request. Like CoDel, a queue that stands is cut
short; unlike it, a queue that only stands because of its callers' own concurrency is left alone.

The limit adapts (AIMD, when `lag_ms` is set) to the event loop's lag: a timer due every 5 ms is
watched, and when the slowest tenth of a window of its wake-ups was late by more than `lag_ms`, the loop
has more work than it can do: the limit shrinks by a tenth (at least one). Otherwise, if requests had to
wait for a slot, it grows by one, up to `max_in_flight`. Lag, not request latency: a request waiting on
a slow backend costs the loop nothing and is the budgets' business (they degrade it); a loop behind
makes every request late, also before admission sees it. How many requests a machine can run at once
depends on its speed and on what else it runs, so a fixed number is either too low or too high."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.rpc import Overloaded


class Admission:
    #: How often the lag timer is due, and how many of its wake-ups make a window (at most 100 ms).
    TICK_S = 0.005
    WINDOW = 20

    #: How long the queue's waits stay short after a refusal at a full queue.
    OVERLOAD_S = 0.1

    def __init__(
        self,
        max_in_flight: int,
        max_queued: int,
        queue_ms: float,
        overload_queue_ms: float | None = None,
        lag_ms: float = 0.0,
    ) -> None:
        """max_in_flight 0 admits everything; overload_queue_ms None keeps queue_ms also in overload;
        lag_ms 0 keeps the limit at max_in_flight."""
        self.max_in_flight = max_in_flight
        self.limit = max_in_flight
        self.max_queued = max_queued
        self.queue_s = queue_ms / 1000
        self.overload_queue_s = self.queue_s if overload_queue_ms is None else overload_queue_ms / 1000
        self._refused_at = -float("inf")
        self.lag_s = lag_ms / 1000
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waited = False
        self._watch: asyncio.Task[None] | None = None

    def _watch_lag(self) -> None:
        if self._watch is None and self.lag_s > 0 and self.max_in_flight > 0:
            self._watch = asyncio.get_running_loop().create_task(self._lag_loop())

    async def _lag_loop(self) -> None:
        lags: list[float] = []
        started = time.perf_counter()
        while True:
            due = time.perf_counter() + self.TICK_S
            await asyncio.sleep(self.TICK_S)
            now = time.perf_counter()
            lags.append(max(0.0, now - due))
            # A window is WINDOW wake-ups or, when the loop is far behind, whatever fitted in that time.
            if len(lags) >= self.WINDOW or now - started >= self.WINDOW * self.TICK_S:
                self.adjust(sorted(lags)[int(len(lags) * 0.9)])
                lags.clear()
                started = now

    def adjust(self, lag_s: float) -> None:
        """One AIMD step from a window's slow-tenth lag."""
        if lag_s > self.lag_s:
            self.limit = max(1, min(self.limit - 1, int(self.limit * 0.9)))
        elif self._waited and self.limit < self.max_in_flight:
            self.limit += 1
        self._waited = False

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.max_in_flight <= 0:
            yield
            return
        self._watch_lag()
        if self.in_flight >= self.limit or self._waiters:
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
        self._waited = True
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
        """A slot comes free: the oldest waiter gets it, while the limit allows."""
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.limit:
            self.in_flight += 1
            self._waiters.popleft().set_result(None)
