"""Authentication and roles at the gateway: a server interceptor in front of every RPC.

A caller sends its API key as the gRPC metadata `authorization: Bearer <key>` (the one way; there is no
second header). The gateway hashes what it was sent and looks the hash up among the keys file's
(services.gateway.keys); the key's roles must include the one the method needs (ROLE_OF):

    no authorization metadata, not `Bearer <key>`, or a key not in the file -> UNAUTHENTICATED
    a known key without the method's role                               -> PERMISSION_DENIED
    a key over its rate limit (rate_per_s / burst in the file)          -> RESOURCE_EXHAUSTED

Health (`grpc.health.v1.Health`) and reflection are exempt unless configured otherwise; when they are
not, any known key may call them. Refusals are counted (`recsys.gateway.auth.refused`, by reason and
method) and logged by the key's name at most once a minute per (reason, method, name); neither a key
nor its hash is ever logged or echoed back. The gateway polls the keys file for changes in the
background (`poll`), so a rotated Kubernetes Secret takes effect without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.common.meters import meter
from services.common.watched import WatchedFile
from services.gateway import keys
from services.gateway.keys import ApiKey
from services.gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)
REFUSED = meter("gateway").create_counter(
    "recsys.gateway.auth.refused",
    unit="{call}",
    description="calls refused by authentication, by reason (missing, malformed, unknown, role) and method",
)

#: The role each gateway RPC needs. A gateway method missing here needs `admin`: a new RPC stays closed
#: until someone decides who may call it (tests/unit/test_auth.py holds the map to gateway.proto).
ROLE_OF = {
    "/recsys.v1.Gateway/Recommend": "recommend",
    "/recsys.v1.Gateway/Feedback": "feedback",
    "/recsys.v1.Gateway/SimilarItems": "recommend",
    "/recsys.v1.Gateway/UpsertItems": "admin",
    "/recsys.v1.Gateway/HideItems": "admin",
    "/recsys.v1.Gateway/UnhideItems": "admin",
}
UNMAPPED_ROLE = "admin"
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection."  # v1alpha and v1
HINT = "send the metadata `authorization: Bearer <API key>`"
LOG_EVERY_S = 60.0


def is_loopback(host: str) -> bool:
    """Only this machine can connect to `host` (a name other than localhost counts as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    #: the metric's label: missing | malformed | unknown | role
    reason: str
    message: str
    #: the key's name when the key was known (reason "role")
    key_name: str = ""


def method_label(method: str) -> str:
    """The method's name for metrics and logs; "unknown" for a path no service here has, so a scanner
    making up method names cannot grow the metric's label set or the log throttle's table."""
    if method in ROLE_OF or method.startswith((HEALTH, REFLECTION)):
        return method.rsplit("/", 1)[-1]
    return "unknown"


def _index(path: Path) -> dict[str, ApiKey]:
    return {k.sha256: k for k in keys.load(path)}


class Authorizer:
    """Decides each call from its method and metadata against the keys file."""

    def __init__(self, path: Path, health: bool = False, reflection: bool = False) -> None:
        self.keys = WatchedFile(path, _index, "API keys", lambda index: {"keys": names(index)})
        self.rates = RateLimiter()
        exempt = [prefix for prefix, required in ((HEALTH, health), (REFLECTION, reflection)) if not required]
        self.exempt = tuple(exempt)

    async def poll(self) -> None:
        """Re-read the keys file if it changed (a PeriodicTask step)."""
        self.keys.poll()

    def check(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Refusal | None:
        """None when the call may proceed."""
        if method.startswith(self.exempt):
            return None
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing", f"missing credentials: {HINT}")
        scheme, _, token = str(values[0]).partition(" ")
        token = token.strip()
        if len(values) > 1 or scheme.lower() != "bearer" or not token:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "malformed", f"malformed authorization metadata: {HINT}"
            )
        # A dict lookup by the presented key's hash: how long it takes depends on the hash, which the
        # caller cannot steer toward a stored one, so timing reveals nothing of the stored keys.
        key = self.keys.value.get(keys.digest(token))
        if key is None:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown",
                "unknown API key (mistyped, revoked, or issued for another deployment)",
            )
        if method.startswith((HEALTH, REFLECTION)):
            return None  # any known key
        role = ROLE_OF.get(method, UNMAPPED_ROLE)
        if role not in key.roles:
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                "role",
                f"API key {key.name!r} lacks the {role!r} role that {method.rsplit('/', 1)[-1]} needs "
                f"(it has {', '.join(key.roles)})",
                key.name,
            )
        if key.rate_per_s is not None and not self.rates.allow(
            key.name, key.rate_per_s, key.bucket_size, time.monotonic()
        ):
            return Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "rate",
                f"API key {key.name!r} is over its rate limit ({key.rate_per_s:g} calls/s, burst "
                f"{key.bucket_size}); retry later",
                key.name,
            )
        return None


def names(index: dict[str, ApiKey]) -> list[str]:
    return sorted(k.name for k in index.values())


def _refusing(handler: grpc.RpcMethodHandler[Any, Any] | None, refusal: Refusal) -> Any:
    """A handler of the same kind (unary or streaming) as the refused method's that only aborts. It has no
    deserializer: a refused request is never parsed."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(refusal.code, refusal.message)

    streaming = (handler.request_streaming, handler.response_streaming) if handler else (False, False)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[streaming]
    return make(refuse)


class LogThrottle:
    """An unauthenticated flood must not become a log flood: one line per slot (reason, method, key name)
    every `every_s`, with the number of refusals left unlogged since the last one."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        #: slot -> (when its next line may be logged, refusals not logged since the last)
        self._slots: dict[tuple[str, str, str], tuple[float, int]] = {}

    def admit(self, slot: tuple[str, str, str], now: float) -> int | None:
        """None: do not log this one; else log it, with this many left unlogged before it."""
        due, skipped = self._slots.get(slot, (0.0, 0))
        if now < due:
            self._slots[slot] = (due, skipped + 1)
            return None
        self._slots[slot] = (now + self.every_s, 0)
        return skipped


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    """First of the gateway's interceptors: a refused call is never decoded, delayed or handled, and an
    unknown method needs a key like any other (without one the caller learns nothing of what exists)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        self.throttle = LogThrottle()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        refusal = self.authorizer.check(method, handler_call_details.invocation_metadata)
        if refusal is None:
            return await continuation(handler_call_details)
        label = method_label(method)
        REFUSED.add(1, {"reason": refusal.reason, "method": label})
        skipped = self.throttle.admit((refusal.reason, label, refusal.key_name), time.monotonic())
        if skipped is not None:
            log.warning(
                "call refused",
                extra={
                    "code": refusal.code.name,
                    "reason": refusal.reason,
                    "method": label,
                    "key": refusal.key_name or None,
                    "refused_unlogged": skipped,
                },
            )
        refused: grpc.RpcMethodHandler[Any, Any] = _refusing(
            await continuation(handler_call_details), refusal
        )
        return refused
