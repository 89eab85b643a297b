"""A WriteEvents/Feedback batch checked and converted: the features service runs it before writing, the
gateway before forwarding (a batch the features service would refuse is refused at once, without a
round trip carrying it)."""

from __future__ import annotations

from typing import Any

from recsys.v1 import common_pb2
from services.common.event_ids import new_event_id
from services.common.rpc import MAX_ID_LENGTH, require, require_finite, require_id, require_max_len
from services.features.store import Event, EventType

MAX_EVENTS = 1000

_EVENT_TYPES = {
    common_pb2.EVENT_TYPE_IMPRESSION: EventType.IMPRESSION,
    common_pb2.EVENT_TYPE_CLICK: EventType.CLICK,
    common_pb2.EVENT_TYPE_RATING: EventType.RATING,
    common_pb2.EVENT_TYPE_EXPOSURE: EventType.EXPOSURE,
}


def events_from_request(events: Any, now_ms: int) -> list[Event]:
    """Validate the whole batch (InvalidArgument naming the field), then convert; nothing is written here.
    An event without an id gets one."""
    require(len(events) > 0, "events", "must hold at least one event")
    require_max_len(events, "events", MAX_EVENTS)
    out: list[Event] = []
    for i, e in enumerate(events):
        require_id(e.user_id, f"events[{i}].user_id")
        kind = _EVENT_TYPES.get(e.type)
        require(
            kind is not None,
            f"events[{i}].type",
            f"must be IMPRESSION, CLICK, RATING or EXPOSURE, got {e.type}",
        )
        assert kind is not None
        if kind is EventType.EXPOSURE:
            require_id(e.experiment, f"events[{i}].experiment")
            require_id(e.arm, f"events[{i}].arm")
            require(len(e.item_id) <= 256, f"events[{i}].item_id", "must be at most 256 characters")
        else:
            require_id(e.item_id, f"events[{i}].item_id")
        if kind is EventType.RATING:
            require_finite(e.rating, f"events[{i}].rating")
        require(e.timestamp_ms >= 0, f"events[{i}].timestamp_ms", f"must be >= 0, got {e.timestamp_ms}")
        require(
            len(e.event_id) <= MAX_ID_LENGTH,
            f"events[{i}].event_id",
            f"must be at most {MAX_ID_LENGTH} characters",
        )
        require(
            e.event_id == e.event_id.strip(), f"events[{i}].event_id", "must not start or end with whitespace"
        )
        out.append(
            Event(
                user_id=e.user_id,
                item_id=e.item_id,
                type=kind,
                timestamp_ms=e.timestamp_ms or now_ms,
                rating=e.rating if kind is EventType.RATING else None,
                context=dict(e.context),
                experiment=e.experiment if kind is EventType.EXPOSURE else "",
                arm=e.arm if kind is EventType.EXPOSURE else "",
                event_id=e.event_id or new_event_id(),
            )
        )
    return out
