"""Undecodable request bytes are the caller's fault: INVALID_ARGUMENT, not grpc's UNKNOWN
("Unexpected DecodeError"). A server interceptor gives every unary method a deserializer that cannot
raise; what it could not parse is refused before the handler runs, naming the method's message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class _Undecodable:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data) if deserialize is not None else data
        except Exception as e:  # any parse failure is the request's
            return _Undecodable(e)

    return parse


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    def __init__(self) -> None:
        #: one wrapped handler per method, built on its first call
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        message = method.rsplit("/", 1)[-1]

        async def checked(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request: not a valid {message} request message ({request.error})",
                )
            return await inner(request, context)

        wrapped = grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = wrapped
        return wrapped
