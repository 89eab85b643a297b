"""What every RPC handler shares: a span named `recsys.<service>.<operation>`, the request count and
duration metrics (services.common.meters), and the mapping of our errors to gRPC status codes (bad
input -> INVALID_ARGUMENT naming the field; no artifacts yet -> UNAVAILABLE)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable, Sized
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from services.common.meters import meter
from services.common.telemetry import tracer

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class InvalidArgument(ValueError):
    """Bad request input; the message starts with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotReady(RuntimeError):
    """The service has no artifacts loaded yet."""


class Overloaded(RuntimeError):
    """The service sheds this request to stay within its capacity (RESOURCE_EXHAUSTED: retry later)."""


class UnknownVersion(LookupError):
    """A request asked for an artifact version this service does not serve (FAILED_PRECONDITION)."""

    def __init__(self, service: str, version: str, served: list[str]) -> None:
        super().__init__(
            f"{service}: artifact_version {version!r} is not served (serving {', '.join(served) or 'none'}; "
            "list it in <artifacts>/PINNED)"
        )
        self.version = version


def require(condition: bool, field: str, problem: str) -> None:
    if not condition:
        raise InvalidArgument(field, problem)


MAX_ID_LENGTH = 256


def require_id(value: str, field: str) -> None:
    require(bool(value.strip()), field, "must not be empty")
    require(
        len(value) <= MAX_ID_LENGTH, field, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    )


def require_max_len(values: Sized, field: str, limit: int) -> None:
    require(len(values) <= limit, field, f"at most {limit} entries, got {len(values)}")


def require_finite(value: float, field: str) -> None:
    require(math.isfinite(value), field, f"must be a finite number, got {value}")


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status a handler aborted with itself (context.abort), else UNKNOWN (an unexpected error)."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


#: Our errors and the status each becomes.
STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    UnknownVersion: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

Handler = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def handler(service: str, operation: str) -> Callable[[Handler[S, Req, Resp]], Handler[S, Req, Resp]]:
    """Decorate a servicer method: span `recsys.<service>.<operation>` and error-to-status mapping."""
    span_name = f"recsys.{service}.{operation}"
    requests = meter(service).create_counter(
        "recsys.rpc.requests", unit="{request}", description="RPCs served, by method and status code"
    )
    duration = meter(service).create_histogram(
        "recsys.rpc.duration", unit="ms", description="from the request's arrival to the reply"
    )

    def decorate(method: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
        @functools.wraps(method)
        async def wrapped(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
            start = time.perf_counter()
            code = "OK"
            with tracer(service).start_as_current_span(span_name) as span:
                try:
                    return await method(self, request, context)
                except tuple(STATUS_OF) as e:
                    status = next(s for kind, s in STATUS_OF.items() if isinstance(e, kind))
                    code = status.name
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(e)))
                    await context.abort(status, str(e))
                except BaseException:  # not ours: a handler's own abort, or a bug (UNKNOWN)
                    code = _aborted_code(context)
                    raise
                finally:
                    requests.add(1, {"method": operation, "code": code})
                    duration.record((time.perf_counter() - start) * 1000, {"method": operation})
            raise AssertionError("unreachable: context.abort raises")

        return wrapped

    return decorate
