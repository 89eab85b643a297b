"""`recsys budget report`: per-stage latency from exported spans against each stage's budget.

Every span that carries `recsys.budget_ms` is a budgeted stage (the gateway sets it on its own span
and on each stage's span). The report groups them by span name and prints p50/p95/p99 against the
budget, with how often a span was over budget or degraded; a stage whose p99 exceeds its budget is a
violation, and the command exits 1 so CI or a Kubernetes Job can gate on it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.otlp_receiver import ReceivedSpan

BUDGET = "recsys.budget_ms"


class NoBudgetedSpans(ValueError):
    """Nothing to report on: no span carries recsys.budget_ms."""


@dataclass(frozen=True)
class StageReport:
    stage: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    budget_ms: float
    over_budget: int
    degraded: int

    @property
    def violated(self) -> bool:
        return self.p99_ms > self.budget_ms


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build(spans: Iterable[ReceivedSpan]) -> list[StageReport]:
    by_stage: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        if isinstance(span.attributes.get(BUDGET), int | float):
            by_stage[span.name].append(span)
    if not by_stage:
        raise NoBudgetedSpans(f"no span carries {BUDGET}: were the spans exported by a recsys gateway?")
    reports = []
    for stage, group in sorted(by_stage.items()):
        durations = sorted(s.duration_ms for s in group)
        # The budget in force for most of the spans (it can change with a config reload).
        budget = Counter(float(s.attributes[BUDGET]) for s in group).most_common(1)[0][0]
        reports.append(
            StageReport(
                stage=stage,
                count=len(group),
                p50_ms=_quantile(durations, 0.50),
                p95_ms=_quantile(durations, 0.95),
                p99_ms=_quantile(durations, 0.99),
                max_ms=durations[-1],
                budget_ms=budget,
                over_budget=sum(bool(s.attributes.get("recsys.over_budget")) for s in group),
                degraded=sum(bool(s.attributes.get("recsys.degraded")) for s in group),
            )
        )
    return reports


def format_reports(reports: list[StageReport]) -> str:
    header = (
        f"{'stage':<34}{'spans':>7}{'p50':>8}{'p95':>8}{'p99':>8}{'budget':>8}{'over':>6}{'degr':>6}  verdict"
    )
    lines = [header]
    for r in reports:
        lines.append(
            f"{r.stage:<34}{r.count:>7}{r.p50_ms:>8.2f}{r.p95_ms:>8.2f}{r.p99_ms:>8.2f}{r.budget_ms:>8.1f}"
            f"{r.over_budget:>6}{r.degraded:>6}  {'VIOLATED' if r.violated else 'ok'}"
        )
    return "\n".join(lines)
