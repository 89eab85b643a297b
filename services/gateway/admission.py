"""Load shedding: at most `max_in_flight` Recommends run at once, up to `max_queued` more wait at most
`queue_ms` for a slot, and the rest are refused at once (Overloaded -> RESOURCE_EXHAUSTED). Past its
capacity a gateway that admits everything makes every request late; this one keeps the admitted ones
within their budget and tells the others to back off in well under a millisecond. Feedback is never
shed (losing an event costs more than answering it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.rpc import Overloaded


class Admission:
    def __init__(self, max_in_flight: int, max_queued: int, queue_ms: float) -> None:
        """max_in_flight 0 admits everything."""
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.queue_s = queue_ms / 1000
        self.in_flight = 0
        self._waiting = 0
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.max_in_flight <= 0:
            yield
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        slots = self._slots
        if slots.locked():
            if self._waiting >= self.max_queued:
                raise Overloaded(
                    f"gateway: overloaded ({self.in_flight} in flight, {self._waiting} queued); retry later"
                )
            self._waiting += 1
            try:
                await asyncio.wait_for(slots.acquire(), self.queue_s)
            except TimeoutError:
                raise Overloaded(
                    f"gateway: overloaded (no slot within {self.queue_s * 1000:g} ms); retry later"
                ) from None
            finally:
                self._waiting -= 1
        else:
            await slots.acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            slots.release()
