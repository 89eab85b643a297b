"""Fault drills: a server interceptor that delays every RPC of a service (health checks excepted), so
operators and tests can watch the gateway keep its budgets while one stage is slow."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class DelayInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    def __init__(self, delay_ms: float) -> None:
        self.delay_s = delay_ms / 1000

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith("/grpc."):
            return handler
        inner = handler.unary_unary
        delay_s = self.delay_s

        async def delayed(request: Any, context: Any) -> Any:
            await asyncio.sleep(delay_s)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            delayed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
