"""Exposure events: one per (user, experiment, arm) served, written to the features service's log.

A response's exposures are appended to a local spool before the response is returned (a write to the
page cache, no fsync: it survives the gateway being killed, not the machine losing power), and one
worker delivers the spool to the features service in batches, off the request path. Each event carries
an id and the store writes an id once, so a batch delivered again after a crash or a timed-out write
that did land is in the log once. While the features service is unreachable, the spool holds the
events (up to its size limit; past it they are dropped and counted, never failing a Recommend)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc
from google.protobuf import json_format
from opentelemetry.metrics import CallbackOptions, Observation

from recsys.v1 import common_pb2
from services.common.meters import meter
from services.common.spool import Record, Spool, SpoolFull

log = logging.getLogger(__name__)

#: Codes after which a batch is worth sending again (the features service or its store was away).
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def _backlog(_options: CallbackOptions) -> Iterable[Observation]:
    yield Observation(sum(logger.spool.backlog_bytes for logger in list(_LOGGERS)))


#: The process's loggers (one per gateway): an instrument's name registers once per process.
_LOGGERS: weakref.WeakSet[ExposureLogger] = weakref.WeakSet()
meter("gateway").create_observable_gauge(
    "recsys.gateway.exposure_spool",
    [_backlog],
    unit="By",
    description="bytes of exposure events spooled, not yet written to the features service",
)


class ExposureLogger:
    def __init__(
        self,
        write: Callable[[list[common_pb2.Event]], Awaitable[None]],
        spool_path: Path,
        max_bytes: int = 64 * 2**20,
        max_batch: int = 500,
        linger_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._write = write
        self.spool = Spool(spool_path, max_bytes, fsync=False)
        self.max_batch = max_batch
        #: How long the first event of a batch waits for company: one write per batch, not per request
        #: (a write per response cost ~3.5 ms of p50 latency at one request in flight).
        self.linger_s = linger_s
        self.max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        _LOGGERS.add(self)

    def submit(self, events: list[common_pb2.Event]) -> None:
        """Spool the events (before the response that caused them is sent) and wake the worker."""
        try:
            self.spool.append([json_format.MessageToDict(e) for e in events])
        except SpoolFull:
            self.dropped += len(events)
            log.error("exposure spool full: events dropped", extra={"dropped": len(events)})
            return
        self.start()
        self._wake.set()

    def start(self) -> None:
        """Start the worker (it also delivers what a previous process left in the spool)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._wake.set()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.spool.backlog_bytes < 64 * self.max_batch:  # a small backlog: wait for company
                await asyncio.sleep(self.linger_s)
            try:
                await self.spool.drain(self._deliver, self.max_batch)
                delay = 0.05
            except grpc.aio.AioRpcError as e:  # retryable: kept in the spool, tried again after a pause
                log.warning(
                    "exposure delivery failed: retrying", extra={"code": e.code().name, "retry_s": delay}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                self._wake.set()

    async def _deliver(self, records: list[Record]) -> None:
        batch = [json_format.ParseDict(r, common_pb2.Event()) for r in records]
        try:
            await self._write(batch)
        except grpc.aio.AioRpcError as e:
            if e.code() in RETRYABLE:
                raise
            # Refused as malformed: sending it again cannot succeed, and it must not block the rest.
            self.dropped += len(batch)
            log.error("exposure events refused: dropped", extra={"events": len(batch), "code": e.code().name})
            return
        self.written += len(batch)

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Deliver what is spooled (what cannot be delivered in time stays for the next start)."""
        deadline = time.monotonic() + timeout_s
        while self.spool.pending and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._task is not None:
            await self.flush()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.spool.close()
