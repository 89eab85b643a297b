"""A configuration file that is re-read when it changes, so an operator's edit (a ConfigMap, a rotated
Secret, a file replaced in place) takes effect without a restart."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from services.common.config import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedFile(Generic[T]):
    """`load(path)`, again whenever the file's mtime, size or inode changes (Kubernetes updates a mounted
    ConfigMap or Secret by swapping a symlink: the inode changes, the mtime may not).

    A file that `load` refuses (ConfigError) or that vanished is logged with the reason and the previous
    value is kept. Readers take `value` once per use: a reload never changes a request midway. The first
    load happens in the constructor and raises, so a bad file stops start-up instead.

    `also`: files `load` reads beside `path` (a certificate's key and CA): a change to any of them reloads
    them all, so a pair replaced one file at a time is judged again once the second file lands."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        what: str,
        describe: Callable[[T], dict[str, Any]],
        also: Sequence[Path] = (),
    ) -> None:
        self.path = path
        self._paths = (path, *also)
        self._load = load
        self._what = what
        self._describe = describe
        self._signature = self._stat()
        self.value = load(path)
        self.reloads = 0
        #: why the last changed file was refused (None once a file loads)
        self.refused: str | None = None

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_signature(p) for p in self._paths)

    def poll(self) -> bool:
        """Reload if the file changed; True when a new value was swapped in."""
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            value = self._load(self.path)
        except ConfigError as e:
            self.refused = str(e)
            log.error(
                f"{self._what} file refused; the previous {self._what} stay in force",
                extra={"path": str(self.path), "reason": str(e)},
            )
            return False
        self.value = value  # one assignment: readers see the old or the new value
        self.refused = None
        self.reloads += 1
        log.info(f"{self._what} reloaded", extra={"path": str(self.path), **self._describe(value)})
        return True


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
