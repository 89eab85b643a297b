"""`recsys experiment simulate`: synthetic users with a KNOWN true lift, so the whole loop
(assignment -> exposure -> feedback -> report) can be checked against the truth.

Users: each has a base click probability per served response p_u ~ Beta(mean base_ctr, concentration);
a user in the treatment clicks with p_u * (1 + lift). Each user is served 1 + Poisson(exposures - 1)
responses during the experiment and Poisson(pre_exposures) before it (their clicks are the CUPED
pre-period). Assignment is the gateway's own (`services.gateway.experiments`), unless `actual_split`
injects a broken one (to see the SRM alarm fire).

Three levels, cheapest first:
* `simulate_table`: per-user aggregates with numpy (thousands of A/A runs in seconds: the statistical tests);
* `simulate_events`: the same as log events (exposure + click events), written to a JSON-lines log that
  `recsys experiment report` reads;
* `simulate_wire`: real requests to a running gateway: Recommend, then clicks on served items through
  Feedback; the gateway writes the exposures, the report reads the features service's log.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import stats

from services.common.tls import ClientTLS
from services.experiment.analysis import Users
from services.features.store import Event, EventType
from services.gateway import experiments as ex

CONTROL, TREATMENT = "control", "treatment"


@dataclass(frozen=True)
class SimConfig:
    users: int = 10_000
    #: True relative lift of the treatment's click probability (0 = an A/A test).
    lift: float = 0.0
    base_ctr: float = 0.1
    #: Mean responses served per user in the experiment (>= 1) and before it.
    exposures: float = 5.0
    pre_exposures: float = 5.0
    #: Beta concentration of the users' click probabilities (lower: more heterogeneous users).
    concentration: float = 5.0
    #: Configured treatment share, percent.
    treatment_weight: float = 50.0
    #: When set, users are split at THIS treatment share regardless of the config (an injected SRM).
    actual_split: float | None = None
    salt: str = "sim"
    experiment: str = "sim"
    seed: int = 0

    def experiment_config(self) -> ex.Experiment:
        return ex.Experiment(
            self.experiment,
            self.salt,
            (
                ex.Arm(CONTROL, 100 - self.treatment_weight),
                ex.Arm(TREATMENT, self.treatment_weight),
            ),
        )

    def weights(self) -> dict[str, float]:
        return {CONTROL: 100 - self.treatment_weight, TREATMENT: self.treatment_weight}


@functools.lru_cache(maxsize=8)
def _assigned(salt: str, users: int, treatment_weight: float) -> npt.NDArray[np.bool_]:
    exp = SimConfig(salt=salt, treatment_weight=treatment_weight).experiment_config()
    return np.fromiter(
        (exp.assign(f"user-{i}").name == TREATMENT for i in range(users)), dtype=bool, count=users
    )


def simulate_table(cfg: SimConfig) -> Users:
    rng = np.random.default_rng(cfg.seed)
    if cfg.actual_split is None:
        treated = _assigned(cfg.salt, cfg.users, cfg.treatment_weight)
    else:
        treated = rng.random(cfg.users) < cfg.actual_split
    a = cfg.base_ctr * cfg.concentration
    p = rng.beta(a, cfg.concentration - a, cfg.users)
    p_served = np.minimum(1.0, p * np.where(treated, 1 + cfg.lift, 1.0))
    exposures = 1 + rng.poisson(max(cfg.exposures - 1, 0.0), cfg.users)
    clicks = rng.binomial(exposures, p_served)
    pre = rng.binomial(rng.poisson(cfg.pre_exposures, cfg.users), p)
    zeros = np.zeros(cfg.users)
    return Users(
        arm=[TREATMENT if t else CONTROL for t in treated],
        exposures=exposures.astype(np.float64),
        clicks=clicks.astype(np.float64),
        rating_sum=zeros,
        rating_n=zeros,
        pre_clicks=pre.astype(np.float64),
        team_a=zeros,
        team_b=zeros,
        pre_period=cfg.pre_exposures > 0,
    )


def simulate_events(cfg: SimConfig, start_ms: int = 1_700_000_000_000) -> Iterator[Event]:
    """The simulation as log events: pre-period clicks, then per served response an exposure and its
    click (if any), one second apart per user."""
    table = simulate_table(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    for i, arm in enumerate(table.arm):
        user = f"user-{i}"
        t = start_ms
        for _ in range(int(table.pre_clicks[i])):
            yield Event(user, f"item-{rng.integers(1000)}", EventType.CLICK, t)
            t += 1000
        t = start_ms + 3_600_000
        n = int(table.exposures[i])
        clicked = set(rng.choice(n, size=int(table.clicks[i]), replace=False).tolist())
        for j in range(n):
            yield Event(
                user,
                "",
                EventType.EXPOSURE,
                t,
                context={"request_id": uuid.uuid4().hex},
                experiment=cfg.experiment,
                arm=arm,
            )
            if j in clicked:
                yield Event(user, f"item-{rng.integers(1000)}", EventType.CLICK, t + 500)
            t += 1000


def write_events(events: Iterator[Event], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a") as f:
        for e in events:
            f.write(json.dumps(e.to_json(), separators=(",", ":")) + "\n")
            n += 1
    return n


def power(cfg: SimConfig, alpha: float = 0.05) -> float:
    """Approximate power of the clicks-per-user test for `cfg` (normal approximation, no CUPED):
    the variance of a user's clicks is the binomial variance plus the spread of p_u over the users."""
    a = cfg.base_ctr * cfg.concentration
    var_p = a * (cfg.concentration - a) / (cfg.concentration**2 * (cfg.concentration + 1))
    n_mean = cfg.exposures
    n_var = max(cfg.exposures - 1, 0.0)
    share = cfg.treatment_weight / 100

    def var_clicks(m: float) -> float:
        p, vp = cfg.base_ctr * m, var_p * m * m
        e_n2 = n_var + n_mean**2
        return n_mean * (p - p * p - vp) + e_n2 * vp + p * p * n_var

    diff = n_mean * cfg.base_ctr * cfg.lift
    se = math.sqrt(
        var_clicks(1 + cfg.lift) / (cfg.users * share) + var_clicks(1.0) / (cfg.users * (1 - share))
    )
    z = float(stats.norm.ppf(1 - alpha / 2))
    return float(stats.norm.sf(z - abs(diff) / se))


def simulate_wire(
    gateway: str,
    experiment: str,
    users: int,
    lift: float,
    base_ctr: float = 0.1,
    k: int = 10,
    requests_per_user: int = 2,
    control: str = "control",
    seed: int = 0,
    api_key: str | None = None,
    tls: ClientTLS | None = None,
) -> dict[str, dict[str, int]]:
    """Real traffic: each synthetic user asks for k items `requests_per_user` times and clicks each
    served item with probability base_ctr / k (times 1 + lift outside the control arm). Returns, per
    arm of `experiment`, each simulated user's number of assigned responses: the exposures the gateway
    logs for them (users it did not assign are left out)."""
    from services.client import Client, event

    rng = np.random.default_rng(seed)
    per_arm: dict[str, dict[str, int]] = {}
    with Client(gateway, api_key=api_key, tls=tls) as client:
        for i in range(users):
            user = f"sim-{seed}-{i}"
            for _ in range(requests_per_user):
                response = client.recommend(user, k=k)
                arm = next((a.arm for a in response.assignments if a.experiment == experiment), "")
                if not arm:
                    break
                assigned = per_arm.setdefault(arm, {})
                assigned[user] = assigned.get(user, 0) + 1
                p = base_ctr / k * (1.0 if arm == control else 1 + lift)
                clicks = [item.item_id for item in response.items if rng.random() < p]
                if clicks:
                    client.feedback([event(user, item, "click") for item in clicks])
    return per_arm
