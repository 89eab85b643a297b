"""The Python client product backends use: Recommend and Feedback on the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType

import grpc

from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common.event_ids import new_event_id

EVENT_TYPES = {
    "impression": common_pb2.EVENT_TYPE_IMPRESSION,
    "click": common_pb2.EVENT_TYPE_CLICK,
    "rating": common_pb2.EVENT_TYPE_RATING,
}


def event(
    user_id: str, item_id: str, kind: str, rating: float = 0.0, event_id: str | None = None
) -> common_pb2.Event:
    """An event of kind impression, click or rating, stamped now, with a new id (or `event_id`): send
    the same event object again after a failed call and it is written once."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"event type {kind!r}: expected one of {', '.join(EVENT_TYPES)}")
    return common_pb2.Event(
        event_id=event_id or new_event_id(),
        user_id=user_id,
        item_id=item_id,
        type=EVENT_TYPES[kind],
        rating=rating,
        timestamp_ms=int(time.time() * 1000),
    )


class Client:
    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.timeout_s = timeout_s

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude: Iterable[str] = (),
        context: Mapping[str, str] | None = None,
        debug: bool = False,
        explain: bool = False,
    ) -> gateway_pb2.RecommendResponse:
        request = gateway_pb2.RecommendRequest(
            user_id=user_id,
            k=k,
            exclude_item_ids=list(exclude),
            context=dict(context or {}),
            debug=debug,
            explain=explain,
        )
        response: gateway_pb2.RecommendResponse = self.stub.Recommend(request, timeout=self.timeout_s)
        return response

    def feedback(self, events: Iterable[common_pb2.Event]) -> int:
        reply: gateway_pb2.FeedbackResponse = self.stub.Feedback(
            gateway_pb2.FeedbackRequest(events=list(events)), timeout=self.timeout_s
        )
        return reply.accepted

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
