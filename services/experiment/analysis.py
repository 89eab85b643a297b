"""`recsys experiment report`: exposures joined with feedback, per-arm metrics, lifts with 95% CIs.

The unit of analysis is the user (the unit of randomization). For one experiment:

* a user's arm is the arm of their exposures (a user seen in two arms, e.g. after a config change that
  re-striped the arms, is dropped and counted in `mixed_users`); exposures repeated with the same
  `request_id` (a retried write) count once; the first exposure time splits the user's feedback into a
  pre-period (before: the CUPED covariate) and the experiment period (from it on);
* metrics: CTR = clicks / exposures (a ratio of per-user sums: delta method), clicks per user (a mean:
  Welch t-test), mean rating = sum of ratings / number of ratings (ratio: delta method);
* every treatment arm against the control: absolute lift and relative lift with 95% CIs (relative lift
  by the delta method), p-values (z test for ratios, Welch t for means);
* sample-ratio mismatch: chi-square of users per arm against the configured weights; p < 0.001 prints a
  loud warning (the assignment or the logging is broken, and no metric can be trusted);
* CUPED (Deng et al. 2013): clicks per user adjusted by the pre-period clicks, when a pre-period exists;
* interleaving: exposures that carry `team_a`/`team_b` credit each later click on an item to the team
  that contributed it; per user, the team with more clicks wins; a two-sided sign test over the users
  with a winner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from services.features.store import Event, EventType

F64 = npt.NDArray[np.float64]
Z95 = 1.959963984540054
SRM_ALPHA = 0.001


# ---- reading the log ----------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[Event]:
    """The embedded store's JSON-lines log, read-only; a torn last line (being written) is skipped."""
    out: list[Event] = []
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n") or not line.strip():
                continue
            out.append(Event.from_json(json.loads(line)))
    return out


def read_redis(url: str, prefix: str = "recsys") -> list[Event]:
    """The Redis store's event stream."""
    import asyncio

    from services.features.redis_store import RedisConfig, RedisStore

    async def main() -> list[Event]:
        store = RedisStore(RedisConfig(url=url, prefix=prefix))
        try:
            return await store.read_events()
        finally:
            await store.close()

    return asyncio.run(main())


# ---- per-user table -----------------------------------------------------------------------------


@dataclass
class Users:
    """One row per user of the experiment."""

    arm: list[str]
    exposures: F64
    clicks: F64
    rating_sum: F64
    rating_n: F64
    pre_clicks: F64
    #: Interleaving credit per user: clicks on team A's / team B's items.
    team_a: F64
    team_b: F64
    mixed_users: int = 0
    pre_period: bool = False


def user_table(events: Iterable[Event], experiment: str) -> Users:
    exposures: dict[str, list[Event]] = {}
    seen_requests: set[str] = set()
    feedback: list[Event] = []
    for e in events:
        if e.type is EventType.EXPOSURE:
            if e.experiment != experiment:
                continue
            rid = e.context.get("request_id", "")
            if rid:
                if rid in seen_requests:
                    continue
                seen_requests.add(rid)
            exposures.setdefault(e.user_id, []).append(e)
        elif e.type in (EventType.CLICK, EventType.RATING):
            feedback.append(e)
    users: dict[str, dict[str, Any]] = {}
    mixed = 0
    for user, evs in exposures.items():
        arms = {e.arm for e in evs}
        if len(arms) > 1:
            mixed += 1
            continue
        teams: dict[str, str] = {}
        for e in sorted(evs, key=lambda x: x.timestamp_ms):
            for team in ("a", "b"):
                for item in filter(None, e.context.get(f"team_{team}", "").split(",")):
                    teams.setdefault(item, team)
        users[user] = {
            "arm": arms.pop(),
            "first": min(e.timestamp_ms for e in evs),
            "exposures": len(evs),
            "clicks": 0,
            "rating_sum": 0.0,
            "rating_n": 0,
            "pre_clicks": 0,
            "teams": teams,
            "a": 0,
            "b": 0,
        }
    pre_period = False
    for e in feedback:
        row = users.get(e.user_id)
        if row is None:
            continue
        if e.timestamp_ms < row["first"]:
            if e.type is EventType.CLICK:
                row["pre_clicks"] += 1
                pre_period = True
            continue
        if e.type is EventType.CLICK:
            row["clicks"] += 1
            team = row["teams"].get(e.item_id)
            if team:
                row[team] += 1
        elif e.rating is not None:
            row["rating_sum"] += e.rating
            row["rating_n"] += 1
    rows = list(users.values())

    def col(key: str) -> F64:
        return np.asarray([r[key] for r in rows], dtype=np.float64)

    return Users(
        arm=[r["arm"] for r in rows],
        exposures=col("exposures"),
        clicks=col("clicks"),
        rating_sum=col("rating_sum"),
        rating_n=col("rating_n"),
        pre_clicks=col("pre_clicks"),
        team_a=col("a"),
        team_b=col("b"),
        mixed_users=mixed,
        pre_period=pre_period,
    )


# ---- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    #: Variance of the estimate (not of the per-user values).
    var: float
    n: int

    @property
    def se(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def ci(self) -> tuple[float, float]:
        return (self.value - Z95 * self.se, self.value + Z95 * self.se)


def mean_estimate(y: F64) -> Estimate:
    n = len(y)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    return Estimate(float(y.mean()), float(y.var(ddof=1)) / n if n > 1 else math.nan, n)


def ratio_estimate(num: F64, den: F64) -> Estimate:
    """sum(num) / sum(den) over users, with the delta-method variance of the ratio of means."""
    n = len(num)
    if n < 2 or den.sum() <= 0:
        return Estimate(math.nan, math.nan, n)
    mx, my = float(den.mean()), float(num.mean())
    cov = np.cov(num, den, ddof=1)
    vy, vx, cxy = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    r = my / mx
    var = (vy - 2 * r * cxy + r * r * vx) / (mx * mx) / n
    return Estimate(r, var, n)


@dataclass(frozen=True)
class Lift:
    absolute: float
    absolute_ci: tuple[float, float]
    relative: float
    relative_ci: tuple[float, float]
    p_value: float
    test: str


def lift(treatment: Estimate, control: Estimate, test: str, df: float | None = None) -> Lift:
    diff = treatment.value - control.value
    se = math.sqrt(treatment.var + control.var) if treatment.var >= 0 and control.var >= 0 else math.nan
    if not math.isfinite(se) or se == 0:
        p = math.nan
        ci = (math.nan, math.nan)
    else:
        stat = diff / se
        p = float(2 * stats.t.sf(abs(stat), df)) if df is not None else float(2 * stats.norm.sf(abs(stat)))
        q = float(stats.t.ppf(0.975, df)) if df is not None else Z95
        ci = (diff - q * se, diff + q * se)
    c, t = control.value, treatment.value
    if c and math.isfinite(c):
        rel = t / c - 1
        rel_var = treatment.var / c**2 + t**2 * control.var / c**4
        rel_se = math.sqrt(rel_var) if rel_var >= 0 else math.nan
        rel_ci = (rel - Z95 * rel_se, rel + Z95 * rel_se)
    else:
        rel, rel_ci = math.nan, (math.nan, math.nan)
    return Lift(diff, ci, rel, rel_ci, p, test)


def welch_df(a: F64, b: F64) -> float:
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    den = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
    return float((va + vb) ** 2 / den) if den > 0 else float(len(a) + len(b) - 2)


def srm(counts: Mapping[str, int], weights: Mapping[str, float]) -> tuple[float, float]:
    """Chi-square statistic and p-value of the users per arm against the expected weights."""
    arms = sorted(set(counts) | set(weights))
    observed = np.asarray([counts.get(a, 0) for a in arms], dtype=np.float64)
    w = np.asarray([weights.get(a, 0.0) for a in arms], dtype=np.float64)
    if observed.sum() == 0 or len(arms) < 2 or w.sum() <= 0:
        return math.nan, math.nan
    expected = w / w.sum() * observed.sum()
    if (expected[observed > 0] == 0).any():
        return math.inf, 0.0
    keep = expected > 0
    result = stats.chisquare(observed[keep], expected[keep])
    return float(result.statistic), float(result.pvalue)


# ---- the report ---------------------------------------------------------------------------------


@dataclass
class ArmStats:
    arm: str
    users: int
    exposures: int
    clicks: int
    ratings: int
    ctr: Estimate
    clicks_per_user: Estimate
    mean_rating: Estimate


@dataclass
class Comparison:
    arm: str
    ctr: Lift
    clicks_per_user: Lift
    mean_rating: Lift
    cuped_clicks_per_user: Lift | None = None
    cuped_variance_reduction: float | None = None


@dataclass
class Interleaving:
    arm: str
    users: int
    wins_a: int
    wins_b: int
    ties: int
    p_value: float


@dataclass
class Report:
    experiment: str
    control: str
    arms: list[ArmStats]
    comparisons: list[Comparison]
    srm_chi2: float
    srm_p: float
    expected_weights: dict[str, float]
    mixed_users: int = 0
    interleaving: list[Interleaving] = field(default_factory=list)
    plot: str | None = None

    @property
    def srm_warning(self) -> bool:
        return math.isfinite(self.srm_p) and self.srm_p < SRM_ALPHA

    def to_json(self) -> dict[str, Any]:
        """A strict-JSON dict: undefined numbers (no ratings in an arm, too few users) become null."""
        out: dict[str, Any] = _finite_or_none(asdict(self))
        out["srm_warning"] = self.srm_warning
        return out

    def format(self) -> str:
        lines: list[str] = []
        if self.srm_warning:
            bar = "!" * 100
            lines += [
                bar,
                f"!!! SAMPLE RATIO MISMATCH: users per arm do not match the configured weights "
                f"(chi2={self.srm_chi2:.1f}, p={self.srm_p:.2g} < {SRM_ALPHA})",
                "!!! Assignment or exposure logging is broken: DO NOT TRUST THE RESULTS BELOW.",
                bar,
            ]
        lines.append(f"experiment {self.experiment}  (control: {self.control})")
        lines.append(
            f"{'arm':<18}{'users':>9}{'exposures':>11}{'clicks':>9}{'CTR':>10}{'clicks/user':>13}"
            f"{'ratings':>9}{'mean rating':>13}"
        )
        for a in self.arms:
            lines.append(
                f"{a.arm:<18}{a.users:>9}{a.exposures:>11}{a.clicks:>9}{a.ctr.value:>10.4f}"
                f"{a.clicks_per_user.value:>13.4f}{a.ratings:>9}{_number(a.mean_rating.value, '.3f'):>13}"
            )
        lines.append(
            f"SRM check: chi2={self.srm_chi2:.2f} p={self.srm_p:.3g} against weights "
            + ", ".join(f"{k}={v:g}" for k, v in self.expected_weights.items())
            + ("  <-- MISMATCH" if self.srm_warning else "  ok")
        )
        if self.mixed_users:
            lines.append(f"note: {self.mixed_users} users were exposed to more than one arm and are left out")

        def fmt(name: str, lf: Lift) -> str:
            if not math.isfinite(lf.absolute):
                return f"  {name:<22} n/a (undefined in an arm: no data or fewer than 2 users)"
            lo, hi = (_number(v, "+.4f") for v in lf.absolute_ci)
            rel, rel_lo, rel_hi = (_number(v, "+.2%") for v in (lf.relative, *lf.relative_ci))
            return (
                f"  {name:<22} abs {lf.absolute:+.4f} [{lo}, {hi}]"
                f"  rel {rel} [{rel_lo}, {rel_hi}]  p={_number(lf.p_value, '.3g')} ({lf.test})"
            )

        for c in self.comparisons:
            lines.append(f"{c.arm} vs {self.control} (95% CIs):")
            lines.append(fmt("CTR", c.ctr))
            lines.append(fmt("clicks per user", c.clicks_per_user))
            lines.append(fmt("mean rating", c.mean_rating))
            if c.cuped_clicks_per_user is not None:
                lines.append(fmt("clicks/user (CUPED)", c.cuped_clicks_per_user))
                lines.append(f"  CUPED variance reduction: {c.cuped_variance_reduction:.1%}")
        for il in self.interleaving:
            lines.append(
                f"interleaving in arm {il.arm}: {il.users} users with clicks, team A wins {il.wins_a}, "
                f"team B wins {il.wins_b}, ties {il.ties}; sign test p={il.p_value:.3g}"
            )
        if self.plot:
            lines.append(f"plot: {self.plot}")
        return "\n".join(lines)


def _number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "n/a"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def analyze(
    table: Users,
    experiment: str,
    weights: Mapping[str, float] | None = None,
    control: str | None = None,
) -> Report:
    arms_present = sorted(set(table.arm))
    expected = dict(weights) if weights else {a: 1.0 for a in arms_present}
    order = list(expected) + [a for a in arms_present if a not in expected]
    if control is None:
        control = "control" if "control" in order else order[0] if order else ""
    arm_idx = np.asarray(table.arm, dtype=object)
    masks = {a: arm_idx == a for a in order}
    x_all = table.pre_clicks
    theta = 0.0
    use_cuped = table.pre_period and len(x_all) > 2 and float(x_all.var()) > 0
    if use_cuped:
        theta = float(np.cov(table.clicks, x_all, ddof=1)[0, 1] / x_all.var(ddof=1))
    arms: list[ArmStats] = []
    for a in order:
        m = masks[a]
        arms.append(
            ArmStats(
                arm=a,
                users=int(m.sum()),
                exposures=int(table.exposures[m].sum()),
                clicks=int(table.clicks[m].sum()),
                ratings=int(table.rating_n[m].sum()),
                ctr=ratio_estimate(table.clicks[m], table.exposures[m]),
                clicks_per_user=mean_estimate(table.clicks[m]),
                mean_rating=ratio_estimate(table.rating_sum[m], table.rating_n[m]),
            )
        )
    by_arm = {a.arm: a for a in arms}
    comparisons: list[Comparison] = []
    interleaving: list[Interleaving] = []
    c_mask = masks.get(control)
    for a in order:
        m = masks[a]
        wa, wb = table.team_a[m], table.team_b[m]
        if (wa + wb).sum() > 0:
            wins_a, wins_b = int((wa > wb).sum()), int((wb > wa).sum())
            ties = int(((wa == wb) & (wa > 0)).sum())
            p = float(stats.binomtest(wins_a, wins_a + wins_b).pvalue) if wins_a + wins_b else math.nan
            interleaving.append(Interleaving(a, int(((wa + wb) > 0).sum()), wins_a, wins_b, ties, p))
        if a == control or c_mask is None or by_arm[a].users < 2 or by_arm[control].users < 2:
            continue
        ct, tt = by_arm[control], by_arm[a]
        y_t, y_c = table.clicks[m], table.clicks[c_mask]
        comp = Comparison(
            arm=a,
            ctr=lift(tt.ctr, ct.ctr, "z, delta method"),
            clicks_per_user=lift(tt.clicks_per_user, ct.clicks_per_user, "Welch t", welch_df(y_t, y_c)),
            mean_rating=lift(tt.mean_rating, ct.mean_rating, "z, delta method"),
        )
        if use_cuped:
            mean_x = float(x_all.mean())
            adj_t = y_t - theta * (x_all[m] - mean_x)
            adj_c = y_c - theta * (x_all[c_mask] - mean_x)
            comp.cuped_clicks_per_user = lift(
                mean_estimate(adj_t), mean_estimate(adj_c), "Welch t, CUPED", welch_df(adj_t, adj_c)
            )
            raw = y_t.var(ddof=1) / len(y_t) + y_c.var(ddof=1) / len(y_c)
            adj = adj_t.var(ddof=1) / len(adj_t) + adj_c.var(ddof=1) / len(adj_c)
            comp.cuped_variance_reduction = float(1 - adj / raw) if raw > 0 else 0.0
        comparisons.append(comp)
    chi2, p = srm({a.arm: a.users for a in arms}, expected)
    return Report(
        experiment=experiment,
        control=control,
        arms=arms,
        comparisons=comparisons,
        srm_chi2=chi2,
        srm_p=p,
        expected_weights=expected,
        mixed_users=table.mixed_users,
        interleaving=interleaving,
    )


def plot(report: Report, path: Path) -> Path:
    """`figure(report)` written as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(report).savefig(path, dpi=100)
    return path


def figure(report: Report) -> Any:
    """Per-arm metrics with 95% CIs, and each treatment's relative lift with its CI: a matplotlib
    Figure made without pyplot, so it changes no backend (a notebook displays it inline)."""
    from matplotlib.figure import Figure

    metrics = [("CTR", "ctr"), ("clicks per user", "clicks_per_user"), ("mean rating", "mean_rating")]
    fig = Figure(figsize=(16, 4))
    axes = fig.subplots(1, 4)
    names = [a.arm for a in report.arms]
    for ax, (title, key) in zip(axes[:3], metrics, strict=True):
        est: list[Estimate] = [getattr(a, key) for a in report.arms]
        values = [e.value if math.isfinite(e.value) else 0.0 for e in est]
        errors = [Z95 * e.se if math.isfinite(e.var) else 0.0 for e in est]
        ax.bar(names, values, yerr=errors, capsize=6, color=["#888888", *["#3b75af"] * (len(names) - 1)])
        ax.set_title(f"{title} (95% CI)")
    ax = axes[3]
    rows: list[tuple[str, Lift]] = []
    for c in report.comparisons:
        rows += [(f"{c.arm}: CTR", c.ctr), (f"{c.arm}: clicks/user", c.clicks_per_user)]
        if c.cuped_clicks_per_user is not None:
            rows.append((f"{c.arm}: clicks/user CUPED", c.cuped_clicks_per_user))
    for i, (_, lf) in enumerate(rows):
        lo, hi = lf.relative_ci
        if math.isfinite(lf.relative):
            ax.errorbar(
                [lf.relative * 100],
                [i],
                xerr=[[(lf.relative - lo) * 100], [(hi - lf.relative) * 100]],
                fmt="o",
            )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel(f"relative lift vs {report.control}, % (95% CI)")
    title = f"experiment {report.experiment}"
    if report.srm_warning:
        title += f"  —  SAMPLE RATIO MISMATCH (p={report.srm_p:.2g})"
    fig.suptitle(title, color="red" if report.srm_warning else "black")
    fig.tight_layout()
    return fig


def report_from_events(
    events: Sequence[Event],
    experiment: str,
    weights: Mapping[str, float] | None = None,
    control: str | None = None,
) -> Report:
    return analyze(user_table(events, experiment), experiment, weights, control)
