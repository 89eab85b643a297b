"""Several artifact versions served side by side: CURRENT plus the ones <artifacts>/PINNED lists.

Experiment arms ask a stage for a version by name (`artifact_version` in the request; empty = CURRENT).
A service keeps one immutable state object per version in a `ServedVersions` and resolves each request's
version once, so a reload never changes it midway.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from services.common.rpc import NotReady, UnknownVersion


class HasVersion(Protocol):
    @property
    def version(self) -> str: ...


S = TypeVar("S", bound=HasVersion)


class ServedVersions(Generic[S]):
    def __init__(self, service: str) -> None:
        self.service = service
        self.current: S | None = None
        self.pinned: dict[str, S] = {}

    def names(self) -> list[str]:
        out = [] if self.current is None else [self.current.version]
        return out + [n for n in sorted(self.pinned) if n not in out]

    def get(self, name: str = "") -> S:
        """The state of version `name` (empty: CURRENT); NotReady before any, UnknownVersion if not served."""
        current = self.current
        if not name or (current is not None and current.version == name):
            if current is None:
                raise NotReady(f"{self.service}: no artifact version loaded yet")
            return current
        state = self.pinned.get(name)
        if state is None:
            raise UnknownVersion(self.service, name, self.names())
        return state

    def reuse(self, name: str) -> S | None:
        """An already-built state of `name` (current or pinned), to avoid building it twice."""
        if self.current is not None and self.current.version == name:
            return self.current
        return self.pinned.get(name)
