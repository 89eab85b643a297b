"""A local append-only spool: events accepted while their store cannot take them, delivered in order later.

The file holds one JSON line per appended batch (a list of records); `<file>.offset` holds the byte
offset of the first batch not yet delivered, replaced atomically after each delivery. Delivery is at
least once: a crash between delivering a batch and recording its offset delivers it again at the next
drain, so the records must carry ids the store writes once (events do: `event_id`).

Bounded: an append that would grow the file past `max_bytes` raises `SpoolFull` (RESOURCE_EXHAUSTED
over gRPC) and writes nothing. Delivered batches are cut off the front of the file once they are half of
it, so a spool that is drained while it is appended to does not grow without end.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.common.rpc import Overloaded

log = logging.getLogger(__name__)

Record = dict[str, Any]


class SpoolFull(Overloaded):
    """The spool is at its size limit: the batch was not accepted (retry later)."""


class SpoolInUse(RuntimeError):
    """Another process holds the spool file."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, path: Path, max_bytes: int, *, fsync: bool = True) -> None:
        """`fsync`: each append is on disk before it returns (else in the page cache: it survives the
        process being killed, not the machine losing power)."""
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._offset_path = path.with_name(path.name + ".offset")
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # One process per spool: two appending and draining the same file would deliver twice and
            # cut each other's batches. The lock goes with the process (a killed one releases it).
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise SpoolInUse(
                f"spool {path} is in use by another process: give each replica its own"
            ) from None
        self._size = self._cut_torn_tail()
        self._offset = self._read_offset()

    # -- state -----------------------------------------------------------------------------------------

    @property
    def backlog_bytes(self) -> int:
        """Bytes appended and not yet delivered."""
        return self._size - self._offset

    @property
    def pending(self) -> bool:
        return self._size > self._offset

    def _cut_torn_tail(self) -> int:
        """A batch cut short by a crash was never acknowledged: drop it."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        data = os.pread(self._fd, size, 0)
        end = data.rfind(b"\n") + 1
        if end != size:
            log.warning(
                "cutting a torn batch off the spool", extra={"path": str(self.path), "bytes": size - end}
            )
            os.ftruncate(self._fd, end)
        return end

    def _read_offset(self) -> int:
        try:
            offset = int(self._offset_path.read_text())
        except (FileNotFoundError, ValueError):
            return 0
        return offset if 0 <= offset <= self._size else 0

    def _write_offset(self, offset: int) -> None:
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self._offset_path)
        self._offset = offset

    # -- append ----------------------------------------------------------------------------------------

    def append(self, records: list[Record]) -> None:
        """Append one batch durably (blocking: call it in a thread when fsync is on)."""
        data = (json.dumps(records, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            if self._size + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.path.name} is full ({self._size} of {self.max_bytes} bytes): retry later"
                )
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
                if self.fsync:
                    os.fsync(self._fd)
            except BaseException:
                os.ftruncate(self._fd, self._size)  # nothing half-written stays
                raise
            self._size += len(data)

    # -- drain -----------------------------------------------------------------------------------------

    def _next(self, max_records: int) -> tuple[list[Record], int]:
        """Whole batches from the offset, up to `max_records` records (at least one batch); their end."""
        with self._lock:
            start, size = self._offset, self._size
        records: list[Record] = []
        end = start
        data = os.pread(self._fd, min(size - start, 16 * 1024 * 1024), start) if size > start else b""
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):  # beyond the 16 MiB read: the next round reads it
                break
            batch = json.loads(line)
            if records and len(records) + len(batch) > max_records:
                break
            records.extend(batch)
            end += len(line)
        return records, end

    async def drain(self, deliver: Callable[[list[Record]], Awaitable[None]], max_records: int = 1000) -> int:
        """Deliver everything pending, oldest first, `max_records` at a time; stops at the first failure
        (which propagates; what was delivered before it stays delivered). Returns the records delivered."""
        delivered = 0
        while True:
            records, end = self._next(max_records)
            if not records:
                return delivered
            await deliver(records)
            with self._lock:
                self._write_offset(end)
                delivered += len(records)
                if self._offset >= self.max_bytes // 2 or self._offset == self._size:
                    self._compact()

    def _compact(self) -> None:
        """Cut the delivered batches off the front (under the lock): the rest is copied to a new file
        that replaces the old one, then the offset is reset."""
        rest = os.pread(self._fd, self._size - self._offset, self._offset)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(rest)
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Offset first: a crash between the two leaves offset 0 on the old file (its batches delivered
        # again, which ids make harmless), never an offset past a new, shorter file's batches.
        self._write_offset(0)
        tmp.replace(self.path)
        _fsync_dir(self.path.parent)
        os.close(self._fd)
        self._fd, self._size = fd, len(rest)

    def close(self) -> None:
        os.close(self._fd)
