"""Background upkeep that runs every few seconds inside a service (artifact reload, store repair...)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs `step` now and then every `interval_s` until `stop()`; an error in one step is logged and
    the next step runs, so upkeep never dies silently.

    `stop` cancels the task and also sets an event that the loop checks between steps. Cancellation
    alone is not enough: a library call can swallow a cancellation that lands mid-call (redis-py does,
    see redis/redis-py#2028) and return normally, and the loop would then never end.
    """

    def __init__(self, name: str, step: Callable[[], Awaitable[None]], interval_s: float) -> None:
        self.name = name
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(step, interval_s), name=name)

    async def _run(self, step: Callable[[], Awaitable[None]], interval_s: float) -> None:
        while not self._stopping.is_set():
            try:
                await step()
            except Exception:
                log.exception("background step failed", extra={"task": self.name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)

    async def stop(self) -> None:
        self._stopping.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
