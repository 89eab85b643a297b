"""Per-key rate limits at the gateway: a token bucket per API key name, refilled at the key's rate.

Limits are per gateway process: with N replicas behind a load balancer a key may make up to N times its
rate in all (the same as shedding, this protects each process; a shared counter would put Redis on the
request path)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, name: str, per_second: float, burst: int, now: float) -> bool:
        """Take one token from `name`'s bucket (capacity `burst`, refilled `per_second`); False when empty."""
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * per_second)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
