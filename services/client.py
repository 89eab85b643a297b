"""The Python client product backends use: Recommend and Feedback on the gateway.

A gateway with API keys needs one on every call: `Client(address, api_key=...)` sends it as the metadata
`authorization: Bearer <key>`. The `recsys` commands that call a gateway take theirs from the
environment variable RECSYS_API_KEY (never a flag: a flag's value shows in `ps` and shell history).
A gateway serving TLS: `Client(address, tls=ClientTLS(ca=Path("ca.crt")))` (services.common.tls; the
commands' --tls-ca flag), so the key travels encrypted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from types import TracebackType

from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common.event_ids import new_event_id
from services.common.tls import ClientTLS, channel

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


API_KEY_ENV = "RECSYS_API_KEY"


def item_filter(
    include_categories: Iterable[str] = (),
    exclude_categories: Iterable[str] = (),
    published_after_ms: int = 0,
    published_before_ms: int = 0,
    attributes: Mapping[str, str] | None = None,
) -> common_pb2.ItemFilter:
    """Business rules for Recommend / SimilarItems (an empty filter allows every item)."""
    return common_pb2.ItemFilter(
        include_categories=list(include_categories),
        exclude_categories=list(exclude_categories),
        published_after_ms=published_after_ms,
        published_before_ms=published_before_ms,
        attributes=dict(attributes or {}),
    )


def api_key_from_env() -> str | None:
    """The key the CLI sends: RECSYS_API_KEY (stripped: a key saved with `recsys keys add > FILE` ends in
    a newline, which metadata cannot carry), or None when it is unset or empty."""
    return os.environ.get(API_KEY_ENV, "").strip() or None


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries `api_key` (none without a key)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class Client:
    def __init__(
        self,
        address: str,
        timeout_s: float = 5.0,
        api_key: str | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self.channel = channel(address, tls)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = auth_metadata(api_key)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude: Iterable[str] = (),
        context: Mapping[str, str] | None = None,
        debug: bool = False,
        explain: bool = False,
        item_filter: common_pb2.ItemFilter | None = None,
    ) -> gateway_pb2.RecommendResponse:
        request = gateway_pb2.RecommendRequest(
            user_id=user_id,
            k=k,
            exclude_item_ids=list(exclude),
            context=dict(context or {}),
            debug=debug,
            explain=explain,
            filter=item_filter,
        )
        response: gateway_pb2.RecommendResponse = self.stub.Recommend(
            request, timeout=self.timeout_s, metadata=self.metadata
        )
        return response

    def feedback(self, events: Iterable[common_pb2.Event]) -> int:
        reply: gateway_pb2.FeedbackResponse = self.stub.Feedback(
            gateway_pb2.FeedbackRequest(events=list(events)), timeout=self.timeout_s, metadata=self.metadata
        )
        return reply.accepted

    def similar_items(
        self, item_id: str, k: int = 10, item_filter: common_pb2.ItemFilter | None = None
    ) -> gateway_pb2.SimilarItemsResponse:
        response: gateway_pb2.SimilarItemsResponse = self.stub.SimilarItems(
            gateway_pb2.SimilarItemsRequest(item_id=item_id, k=k, filter=item_filter),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )
        return response

    def upsert_items(self, items: Iterable[common_pb2.CatalogueItem]) -> common_pb2.UpsertItemsResponse:
        """Add or replace up to 1000 items (role admin); the reply's catalogue_version includes them."""
        reply: common_pb2.UpsertItemsResponse = self.stub.UpsertItems(
            common_pb2.UpsertItemsRequest(items=list(items)), timeout=self.timeout_s, metadata=self.metadata
        )
        return reply

    def hide_items(self, item_ids: Iterable[str], hide: bool = True) -> common_pb2.HideItemsResponse:
        """Hide (or with hide=False show again) up to 1000 items (role admin)."""
        call = self.stub.HideItems if hide else self.stub.UnhideItems
        reply: common_pb2.HideItemsResponse = call(
            common_pb2.HideItemsRequest(item_ids=list(item_ids)),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )
        return reply

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
