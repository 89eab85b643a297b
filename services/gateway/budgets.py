"""Latency budgets: a total per request and one per stage; each stage's gRPC deadline is the smaller of
its own budget and what is left of the total, and a stage with too little left is skipped (its
fallback answers instead)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: A stage that would get less than this is not called at all: it could not finish, and the
#: attempt would only delay the fallback.
MIN_STAGE_MS = 1.0


@dataclass
class Budget:
    total_ms: float
    started: float = field(default_factory=time.perf_counter)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def remaining_ms(self) -> float:
        return self.total_ms - self.elapsed_ms()

    def deadline_s(self, stage_budget_ms: float) -> float | None:
        """The stage's gRPC timeout in seconds, or None when the total has too little left for it."""
        allowed = min(stage_budget_ms, self.remaining_ms())
        return allowed / 1000 if allowed >= MIN_STAGE_MS else None
