"""Where accepted events go: the online store, or, while it cannot take them, the local spool.

An event is acknowledged only once it is durable in one of the two. While the spool holds anything,
new batches go behind it (so the log keeps the order they were accepted in); a periodic drain delivers
the spool to the store when it answers again. Delivery is at least once and the store writes an event
id once, so a batch delivered twice (a crash mid-drain, a store write that timed out but landed) is in
the log once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.meters import meter
from services.common.spool import Record, Spool
from services.features.store import Event, OnlineStore

log = logging.getLogger(__name__)

SPOOLED = meter("features").create_counter(
    "recsys.features.events.spooled",
    unit="{event}",
    description="events spooled while the store was unreachable",
)
DRAINED = meter("features").create_counter(
    "recsys.features.events.drained", unit="{event}", description="spooled events delivered to the store"
)

#: Events per store write while draining (one script call each).
MAX_DRAIN_BATCH = 1000
#: Failures that mean "the store cannot take writes now", not "this batch is wrong".
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class EventWriter:
    def __init__(self, store: OnlineStore, spool: Spool | None = None, store_timeout_s: float = 0.25) -> None:
        """`spool` None: a store in this process (the embedded one), where the spool would share its disk."""
        self.store = store
        self.spool = spool
        self.store_timeout_s = store_timeout_s
        self._drain_lock = asyncio.Lock()

    async def write(self, events: Sequence[Event]) -> None:
        """Durable in the store or the spool when this returns; SpoolFull when neither can take it."""
        if self.spool is None:
            await self.store.append_events(events)
            return
        if not self.spool.pending:
            try:
                await asyncio.wait_for(self.store.append_events(events), self.store_timeout_s)
                return
            except UNREACHABLE as e:
                log.warning(
                    "online store unreachable: spooling events", extra={"reason": str(e) or type(e).__name__}
                )
        await asyncio.to_thread(self.spool.append, [e.to_json() for e in events])
        SPOOLED.add(len(events))

    async def drain(self) -> None:
        """Deliver the spool to the store, oldest first, until it is empty or the store fails again."""
        if self.spool is None or not self.spool.pending:
            return
        async with self._drain_lock:
            try:
                delivered = await self.spool.drain(self._deliver, max_records=MAX_DRAIN_BATCH)
            except UNREACHABLE as e:
                log.info(
                    "spool drain paused: store still unreachable",
                    extra={"reason": str(e) or type(e).__name__},
                )
                return
            if delivered:
                log.warning("spooled events delivered to the store", extra={"events": delivered})

    async def _deliver(self, records: list[Record]) -> None:
        await asyncio.wait_for(
            self.store.append_events([Event.from_json(r) for r in records]), self.store_timeout_s
        )
        DRAINED.add(len(records))

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
