"""The embedded store's event log on disk: JSON lines, one per event, each with its sequence number
(`seq`, first in the line) and when it was written (`written_ms`).

* Appends are one write, flushed and fsynced before they are acknowledged; a failed write is cut off
  again, and a torn last line (a crash mid-write, never acknowledged) is cut off on open.
* A checkpoint (`<log>.checkpoint.json`) holds the live state the store derived from the log through
  some `seq`; on open only the lines after it are read and applied, not the whole file.
* Retention compacts the file: the oldest lines past an age or a count are dropped, but never one the
  trainer has not consumed (`<log>.consumed` holds the last consumed `seq`, when a consumer marks one).
  The checkpoint is written first, so a crash mid-compaction loses no live state.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Record = dict[str, Any]
SEQ = re.compile(rb'^\{"seq":(\d+),')


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class EventFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint_path = path.with_name(path.name + ".checkpoint.json")
        self.consumed_path = path.with_name(path.name + ".consumed")
        path.parent.mkdir(parents=True, exist_ok=True)
        #: The sequence number of the last line written.
        self.seq = 0

    # -- open ------------------------------------------------------------------------------------------

    def recover(self) -> tuple[Any, list[Record]]:
        """(the checkpointed state or None, the records after it, oldest first)."""
        self._cut_torn_tail()
        state, after = None, -1  # no checkpoint: every line (lines from before seqs were logged are seq 0)
        try:
            checkpoint = json.loads(self.checkpoint_path.read_text())
            state, after = checkpoint["state"], int(checkpoint["seq"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            log.warning("event log checkpoint unreadable: replaying the whole log", extra={"reason": str(e)})
        tail = [json.loads(line) for line in self._lines_after(after)]
        self.seq = int(tail[-1]["seq"]) if tail else max(after, self._last_seq())
        return state, tail

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            # The last newline: read backwards in blocks (a torn line is short; the log may be large).
            end, block = size, 1 << 16
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                chunk = f.read(end - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            if end != size:
                log.warning(
                    "cutting a torn line off the event log",
                    extra={"path": str(self.path), "bytes": size - end},
                )
                f.truncate(end)

    def _lines(self) -> Iterator[bytes]:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield line

    def _lines_after(self, seq: int) -> Iterator[bytes]:
        """Lines whose seq is above `seq` (lines from before seqs were logged count as seq 0)."""
        for line in self._lines():
            match = SEQ.match(line)
            if (int(match.group(1)) if match else 0) > seq:
                yield line

    def _last_seq(self) -> int:
        last = 0
        for line in self._lines():
            match = SEQ.match(line)
            last = int(match.group(1)) if match else last
        return last

    # -- append ----------------------------------------------------------------------------------------

    def append(self, records: list[Record], written_ms: int) -> None:
        """One durable write of `records` (each gets the next seq); all or nothing."""
        seq = self.seq
        lines = []
        for record in records:
            seq += 1
            lines.append(json.dumps({"seq": seq, **record, "written_ms": written_ms}, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        with self.path.open("ab") as f:
            start = f.tell()
            try:
                self._write(f.fileno(), data)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                f.truncate(start)  # cut the partial batch off again: all or nothing
                raise
        self.seq = seq

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def records(self) -> list[Record]:
        return [json.loads(line) for line in self._lines()]

    # -- checkpoint, consumer mark, retention ----------------------------------------------------------

    def checkpoint(self, state: Any) -> None:
        """The live state derived from every line through the current seq (blocking; the caller keeps
        the state from changing until this returns)."""
        _atomic_write(
            self.checkpoint_path, json.dumps({"seq": self.seq, "state": state}, separators=(",", ":"))
        )

    def consumed(self) -> int | None:
        try:
            return int(self.consumed_path.read_text())
        except FileNotFoundError:
            return None

    def mark_consumed(self, seq: int) -> None:
        _atomic_write(self.consumed_path, str(seq))

    def compact(self, max_age_s: float, max_len: int, now_ms: int) -> int:
        """Drop the oldest lines older than `max_age_s` (0: any age) or beyond the newest `max_len` (0: any
        count), never past the consumer's mark; rewrites the file only when a tenth of it (at least one
        line) can go. Returns the lines dropped. Call `checkpoint` first."""
        lines = list(self._lines())
        consumed = self.consumed()
        drop = 0
        for i, line in enumerate(lines):
            record = json.loads(line)
            too_old = max_age_s > 0 and record.get("written_ms", now_ms) < now_ms - max_age_s * 1000
            too_many = max_len > 0 and len(lines) - i > max_len
            if not (too_old or too_many) or (consumed is not None and int(record.get("seq", 0)) > consumed):
                break
            drop = i + 1
        if drop == 0 or drop < len(lines) // 10:
            return 0
        tmp = self.path.with_name(self.path.name + ".compact")
        with tmp.open("wb") as f:
            f.writelines(lines[drop:])
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        return drop
