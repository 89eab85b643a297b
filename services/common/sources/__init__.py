"""The candidate sources, by name: the one registry the trainer, the retrieval service and the gateway's
experiment config read. Adding a source is a module with a `Source` subclass and one entry here.

Modules are imported on first use, so a process that only checks names (the gateway) loads no FAISS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.sources.base import Source

REGISTRY: dict[str, str] = {
    "ease": "services.common.sources.ease:Ease",
    "cooc": "services.common.sources.cooccurrence:Cooccurrence",
    "rp3": "services.common.sources.rp3beta:Rp3beta",
    "seq": "services.common.sources.sequence:Sequence",
    "seqease": "services.common.sources.sequence_ease:SequenceEase",
    "recent": "services.common.sources.recent:Recent",
    "als": "services.common.sources.als:Als",
    "twotower": "services.common.sources.two_tower:TwoTower",
    "content": "services.common.sources.content:Content",
    "popular": "services.common.sources.popularity:Popularity",
}
SOURCE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def source_class(name: str) -> type[Source]:
    """The Source subclass registered as `name`; KeyError naming the known ones."""
    try:
        module, _, cls = REGISTRY[name].partition(":")
    except KeyError:
        raise KeyError(f"unknown source {name!r} (known: {', '.join(SOURCE_NAMES)})") from None
    found: type[Source] = getattr(importlib.import_module(module), cls)
    return found
