"""The live catalogue: items upserted or hidden through the API, beside the ones an artifact version was
trained on. The features service keeps it in the online store (services.features.catalogue); the
gateway and the retrieval replicas mirror it (`CatalogueMirror`), catching up from the features
service's `GetCatalogue` whenever a request carries a newer catalogue version than theirs.

An entry is one item's whole state: its metadata when upserted (replaced whole by a later upsert), and
whether it is hidden (kept across upserts; a trained item can be hidden without being upserted).
Every change gets the next catalogue version, so "every change after version v" is a well-defined read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from recsys.v1 import common_pb2, features_pb2
from services.common.rpc import require, require_id, require_max_len

#: The origin of a candidate the served version does not know (an upserted item): retrieval appends
#: them, by content; the ranking service gives them its exploration slots.
FRESH = "fresh"
MAX_ITEMS = 1000
MAX_LABELS = 64
MAX_TEXT = 1024


@dataclass(frozen=True)
class CatalogueItem:
    item_id: str
    title: str = ""
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    published_at_ms: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "categories": list(self.categories),
            "tags": list(self.tags),
            "published_at_ms": self.published_at_ms,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CatalogueItem:
        return cls(
            item_id=str(data["item_id"]),
            title=str(data.get("title") or ""),
            categories=tuple(str(c) for c in data.get("categories") or ()),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            published_at_ms=int(data.get("published_at_ms") or 0),
            attributes={str(k): str(v) for k, v in (data.get("attributes") or {}).items()},
        )

    def to_proto(self) -> common_pb2.CatalogueItem:
        return common_pb2.CatalogueItem(
            item_id=self.item_id,
            title=self.title,
            categories=self.categories,
            tags=self.tags,
            published_at_ms=self.published_at_ms,
            attributes=dict(self.attributes),
        )


@dataclass(frozen=True)
class Entry:
    """One item's state in the live catalogue, as of catalogue version `version`."""

    item: CatalogueItem
    upserted: bool
    hidden: bool
    version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item.to_json(),
            "upserted": self.upserted,
            "hidden": self.hidden,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        return cls(
            CatalogueItem.from_json(data["item"]),
            bool(data["upserted"]),
            bool(data["hidden"]),
            int(data["version"]),
        )

    def to_proto(self) -> features_pb2.CatalogueEntry:
        return features_pb2.CatalogueEntry(
            item=self.item.to_proto(), upserted=self.upserted, hidden=self.hidden, version=self.version
        )

    @classmethod
    def from_proto(cls, entry: features_pb2.CatalogueEntry) -> Entry:
        return cls(item_from_proto(entry.item), entry.upserted, entry.hidden, entry.version)


def item_from_proto(item: common_pb2.CatalogueItem) -> CatalogueItem:
    return CatalogueItem(
        item_id=item.item_id,
        title=item.title,
        categories=tuple(item.categories),
        tags=tuple(item.tags),
        published_at_ms=item.published_at_ms,
        attributes=dict(item.attributes),
    )


def with_item(entry: Entry | None, item: CatalogueItem, version: int) -> Entry:
    """`item` replacing whatever the entry held, whole (its hidden flag stays)."""
    return Entry(item, True, entry.hidden if entry is not None else False, version)


def with_hidden(entry: Entry | None, item_id: str, hide: bool, version: int) -> Entry:
    """The entry hidden or shown (a trained item never upserted gets an entry holding only its id)."""
    if entry is None:
        return Entry(CatalogueItem(item_id), False, hide, version)
    return replace(entry, hidden=hide, version=version)


def _labels(values: Iterable[str], field_name: str) -> None:
    values = list(values)
    require_max_len(values, field_name, MAX_LABELS)
    for j, v in enumerate(values):
        require_id(v, f"{field_name}[{j}]")


def items_from_request(items: Any) -> list[CatalogueItem]:
    """Validate a whole UpsertItems batch (InvalidArgument naming the field), then convert."""
    require(len(items) > 0, "items", "must hold at least one item")
    require_max_len(items, "items", MAX_ITEMS)
    out: list[CatalogueItem] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        require_id(item.item_id, f"items[{i}].item_id")
        require(
            item.item_id not in seen, f"items[{i}].item_id", f"{item.item_id!r} appears twice in the batch"
        )
        seen.add(item.item_id)
        require(len(item.title) <= MAX_TEXT, f"items[{i}].title", f"at most {MAX_TEXT} characters")
        _labels(item.categories, f"items[{i}].categories")
        _labels(item.tags, f"items[{i}].tags")
        require(item.published_at_ms >= 0, f"items[{i}].published_at_ms", "must be >= 0")
        require_max_len(item.attributes, f"items[{i}].attributes", MAX_LABELS)
        for name, value in item.attributes.items():
            require(bool(name.strip()), f"items[{i}].attributes", "names must not be empty")
            require(
                len(name) <= 256 and len(value) <= MAX_TEXT, f"items[{i}].attributes[{name!r}]", "too long"
            )
        out.append(item_from_proto(item))
    return out


def ids_from_request(item_ids: Any) -> list[str]:
    require(len(item_ids) > 0, "item_ids", "must hold at least one id")
    require_max_len(item_ids, "item_ids", MAX_ITEMS)
    for i, item_id in enumerate(item_ids):
        require_id(item_id, f"item_ids[{i}]")
    return list(dict.fromkeys(item_ids))


def check_filter(
    f: common_pb2.ItemFilter, known_attributes: frozenset[str] | None, field: str = "filter"
) -> None:
    """InvalidArgument for a filter that cannot mean what its caller wants; attribute names are checked
    against `known_attributes` (None: not checked here)."""
    for name in ("include_categories", "exclude_categories"):
        values = getattr(f, name)
        require(len(values) <= 1000, f"{field}.{name}", f"at most 1000 entries, got {len(values)}")
    require(f.published_after_ms >= 0, f"{field}.published_after_ms", "must be >= 0")
    require(f.published_before_ms >= 0, f"{field}.published_before_ms", "must be >= 0")
    if known_attributes is None:
        return
    unknown = sorted(set(f.attributes) - known_attributes)
    require(
        not unknown,
        f"{field}.attributes",
        f"no item of the catalogue has the attribute(s) {unknown} "
        f"(known: {', '.join(sorted(known_attributes)) or 'none'})",
    )


def is_empty(f: common_pb2.ItemFilter) -> bool:
    return not (
        f.include_categories
        or f.exclude_categories
        or f.published_after_ms
        or f.published_before_ms
        or f.attributes
    )


def matches(item: CatalogueItem, f: common_pb2.ItemFilter) -> bool:
    cats = set(item.categories)
    if f.include_categories and cats.isdisjoint(f.include_categories):
        return False
    if not cats.isdisjoint(f.exclude_categories):
        return False
    published = item.published_at_ms
    if f.published_after_ms and not (published and published > f.published_after_ms):
        return False
    if f.published_before_ms and not (published and published < f.published_before_ms):
        return False
    return all(item.attributes.get(k) == v for k, v in f.attributes.items())


Fetch = Callable[[int], Awaitable[features_pb2.GetCatalogueResponse]]


class CatalogueMirror:
    """A replica's copy of the live catalogue, brought up to a version by `catch_up`.

    Readers take `state` once per request (an immutable snapshot, replaced whole on every change)."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self.state = MirrorState()
        self._lock = asyncio.Lock()

    async def catch_up(self, version: int = -1) -> MirrorState:
        """The state at `version` or later (-1: whatever the features service has now). Raises what the
        fetch raises; the old state then stays."""
        if 0 <= version <= self.state.version:
            return self.state
        async with self._lock:  # one fetch at a time: requests waiting for the same version share it
            if 0 <= version <= self.state.version:
                return self.state
            reply = await self._fetch(self.state.version)
            self.state = self.state.applied([Entry.from_proto(e) for e in reply.entries], reply.version)
        return self.state


@dataclass(frozen=True)
class MirrorState:
    version: int = 0
    entries: Mapping[str, Entry] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()

    def applied(self, changes: list[Entry], version: int) -> MirrorState:
        if not changes and version == self.version:
            return self
        entries = dict(self.entries)
        for entry in changes:
            entries[entry.item.item_id] = entry
        return MirrorState(
            max(version, self.version), entries, frozenset(i for i, e in entries.items() if e.hidden)
        )

    @property
    def attributes(self) -> frozenset[str]:
        """Every attribute name an upserted item has (what a filter may name)."""
        return frozenset(k for e in self.entries.values() if e.upserted for k in e.item.attributes)

    def upserted(self) -> list[CatalogueItem]:
        """Every upserted item (hidden ones too: callers drop `hidden` themselves), by id."""
        return [e.item for _, e in sorted(self.entries.items()) if e.upserted]
