"""Event ids: the idempotency key of every event (a client's, or one assigned when it is accepted)."""

from __future__ import annotations

import uuid


def new_event_id() -> str:
    return uuid.uuid4().hex
