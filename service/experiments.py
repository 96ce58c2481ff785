"""Online A/B experiments between routers: arms with weights, stable assignment, per-arm
statistics with confidence intervals, tests that respect the unit of randomization, and stop
rules for quality and cost.

One experiment runs at a time. Each auto-routed request whose caller did not pick a router is
assigned an arm by a stable hash of the experiment name and its unit: the tenant (a tenant keeps
its arm), the request's ``user`` field (a conversation keeps its arm; requests without one fall
back to their tenant) or the request itself (each request drawn on its own). The arm names the
router that serves it: ``champion`` (the learned router in service), ``challenger`` (the router
in ``SWITCHBOARD_CHALLENGER_DIR``) or ``heuristic``. The first arm is the control. Requests
record ``<experiment>:<arm>`` in the ledger's ``arm`` column.

Requests of one tenant or one user are not independent (the same prompts, the same people
rating), so with unit ``tenant`` or ``user`` every interval and test is computed over per-unit
means (Welch's t over units: each unit counts once); with unit ``request`` over requests. A
tenant-unit experiment with fewer than ``SWITCHBOARD_EXPERIMENT_MIN_TENANTS`` tenants is refused
unless forced: a handful of tenants gives a handful of clusters, and a single tenant puts every
request in one arm.

Per arm: units and requests (the balance), cost per request, feedback, latency and fallback rate,
each with a 95 % interval inside the metric's range, and the requests exploration sent to a
random model. Each other arm is compared with the control on feedback and on cost per request
(difference and 95 % interval). Upkeep (every ``SWITCHBOARD_UPKEEP_INTERVAL_S``) stops the
experiment when an arm's feedback is worse than the control's by more than ``margin``
(one-sided p < 0.05), when every arm's quality and cost comparisons are conclusive, or when
``max_requests`` requests have been served (``stop_reason`` below).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger import Principal, insert_ignore, now
from service.refreshing import Refreshing
from service.routing.exploration import stable_unit
from service.tables import api_keys, experiments, feedback, requests

ROUTERS = ("champion", "challenger", "heuristic")
UNITS = ("tenant", "user", "request")
ALPHA = 0.05
MIN_TENANTS = 20  # the default of SWITCHBOARD_EXPERIMENT_MIN_TENANTS
ACTIVE_DAYS = 30  # a tenant with traffic this recent counts towards the minimum
SRM_ALPHA = 0.001  # units per arm this unlikely under the weights are reported


class InvalidExperiment(ValueError):
    """An experiment that cannot start as asked; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Arm:
    name: str
    router: str
    weight: float


@dataclass(frozen=True)
class Experiment:
    id: int
    name: str
    arms: tuple[Arm, ...]
    unit: str
    margin: float
    min_feedback: int
    status: str
    started_at: Any
    stopped_at: Any = None
    stop_reason: str | None = None
    max_requests: int | None = None
    forced: bool = False  # started below the tenant minimum
    tenants_at_start: int | None = None  # tenants counted when a tenant-unit one started

    @classmethod
    def from_row(cls, row: Any) -> Experiment:
        m = row._mapping
        return cls(
            id=m["id"],
            name=m["name"],
            arms=tuple(Arm(a["name"], a["router"], float(a["weight"])) for a in m["arms"]),
            unit=m["unit"],
            margin=m["margin"],
            min_feedback=m["min_feedback"],
            status=m["status"],
            started_at=m["started_at"],
            stopped_at=m["stopped_at"],
            stop_reason=m["stop_reason"],
            max_requests=m["max_requests"],
            forced=bool(m["forced"]),
            tenants_at_start=m["tenants_at_start"],
        )

    def assign(self, principal: Principal, user: str | None, request_id: str) -> Arm:
        """The arm of this request: fixed by the experiment and the unit, weighted."""
        if self.unit == "request":
            unit = f"request:{request_id}"
        else:
            unit = user if self.unit == "user" and user else f"tenant:{principal.tenant}"
        point = stable_unit(self.name, unit) * sum(a.weight for a in self.arms)
        for arm in self.arms:
            if point < arm.weight:
                return arm
            point -= arm.weight
        return self.arms[-1]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arms": [a.__dict__ for a in self.arms],
            "unit": self.unit,
            "margin": self.margin,
            "min_feedback": self.min_feedback,
            "max_requests": self.max_requests,
            "forced": self.forced,
            "tenants_at_start": self.tenants_at_start,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "stopped_at": _iso(self.stopped_at),
            "stop_reason": self.stop_reason,
        }


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def parse_arms(text: str) -> list[Arm]:
    """``champion:50,heuristic:50`` (or ``name=router:weight``) into arms, control first."""
    arms = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        label, _, rest = part.rpartition("=") if "=" in part else ("", "", part)
        router, _, weight = rest.partition(":")
        try:
            value = float(weight or 1)
        except ValueError:
            raise InvalidExperiment(f"arm {part!r}: the weight must be a number", "arms") from None
        arms.append(Arm(label or router, router, value))
    check_arms(arms)
    return arms


def check_arms(arms: list[Arm]) -> None:
    if len(arms) < 2:
        raise InvalidExperiment("an experiment needs at least two arms", "arms")
    if len({a.name for a in arms}) != len(arms):
        raise InvalidExperiment("arm names must differ", "arms")
    for arm in arms:
        if arm.router not in ROUTERS:
            raise InvalidExperiment(
                f"arm {arm.name}: router must be one of {', '.join(ROUTERS)}", "arms"
            )
        if not (arm.weight > 0 and math.isfinite(arm.weight)):
            raise InvalidExperiment(f"arm {arm.name}: weight must be positive", "arms")


def _t(q: float, dof: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def mean_interval(
    values: list[float], low: float = -math.inf, high: float = math.inf
) -> dict[str, float | None]:
    """Mean and 95 % t interval, clipped to the values' possible range, and how many values."""
    n = len(values)
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": n}
    half = _t(0.975, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return {
        "mean": mean,
        "ci_low": max(low, mean - half),
        "ci_high": min(high, mean + half),
        "n": n,
    }


def _welch(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """mean(a) - mean(b), its standard error and Welch-Satterthwaite degrees of freedom."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(a) - np.mean(b))
    if va + vb == 0:
        return diff, 0.0, math.inf
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, float(math.sqrt(va + vb)), float(dof)


def welch_difference(
    a: list[float], b: list[float], low: float = -math.inf, high: float = math.inf
) -> dict[str, float | None]:
    """mean(a) - mean(b) with its 95 % Welch interval, inside [low - high, high - low] (the
    range a difference of two means in [low, high] can take)."""
    found = _welch(a, b)
    if found is None:
        mean = float(np.mean(a) - np.mean(b)) if a and b else None
        return {"diff": mean, "ci_low": None, "ci_high": None}
    diff, se, dof = found
    half = 0.0 if se == 0 else _t(0.975, dof) * se
    span = high - low
    return {
        "diff": diff,
        "ci_low": max(-span, diff - half),
        "ci_high": min(span, diff + half),
    }


def welch_less(a: list[float], b: list[float], margin: float) -> float | None:
    """One-sided p-value that mean(a) < mean(b) - margin (Welch's t-test)."""
    from scipy import stats

    found = _welch(a, b)
    if found is None:
        return None
    diff, se, dof = found
    if se == 0:
        return 0.0 if diff < -margin else 1.0
    return float(stats.t.cdf((diff + margin) / se, dof))


def unit_key(unit: str, request_id: str, tenant_id: int, end_user: str | None) -> str:
    """The cluster a logged request belongs to, the same grouping as ``Experiment.assign``."""
    if unit == "request":
        return f"request:{request_id}"
    if unit == "user" and end_user:
        return f"user:{end_user}"
    return f"tenant:{tenant_id}"


@dataclass
class Served:
    """One request of an experiment, as the statistics see it."""

    arm: str
    unit: str
    cost: float | None
    latency: float
    fallback: float
    explored: bool = False
    ratings: list[float] = field(default_factory=list)

    def value(self, metric: str) -> float | None:
        if metric == "feedback":  # a request rated several times counts once, at its mean
            return float(np.mean(self.ratings)) if self.ratings else None
        return {"cost": self.cost, "latency": self.latency, "fallback": self.fallback}[metric]


RANGES = {
    "cost": (0.0, math.inf),
    "feedback": (0.0, 1.0),
    "latency": (0.0, math.inf),
    "fallback": (0.0, 1.0),
}


def compared_values(served: list[Served], metric: str, by_unit: bool) -> list[float]:
    """What a test compares: each request's value, or each unit's mean of them."""
    pairs = [(s.unit, v) for s in served if (v := s.value(metric)) is not None]
    if not by_unit:
        return [v for _, v in pairs]
    groups: dict[str, list[float]] = defaultdict(list)
    for unit, v in pairs:
        groups[unit].append(v)
    return [float(np.mean(vs)) for vs in groups.values()]


def _sample_ratio_p(observed: list[int], weights: list[float]) -> float | None:
    """Chi-square p-value of the units per arm under the arms' weights (None when too few)."""
    from scipy import stats

    total = sum(observed)
    expected = [total * w / sum(weights) for w in weights]
    if min(expected, default=0) < 5:
        return None
    return float(stats.chisquare(observed, expected).pvalue)


def summarize(experiment: Experiment, served: list[Served]) -> dict[str, Any]:
    """Per-arm statistics, the balance, warnings, and each arm's comparison with the control."""
    by_unit = experiment.unit != "request"
    method = "welch_unit_means" if by_unit else "welch_requests"
    per_arm = {a.name: [s for s in served if s.arm == a.name] for a in experiment.arms}
    values = {
        name: {m: compared_values(data, m, by_unit) for m in RANGES}
        for name, data in per_arm.items()
    }
    total_weight = sum(a.weight for a in experiment.arms)
    total_requests = len(served)
    units = {name: len({s.unit for s in data}) for name, data in per_arm.items()}
    total_units = sum(units.values())
    control = experiment.arms[0].name
    arms = []
    for arm in experiment.arms:
        data, mine = per_arm[arm.name], values[arm.name]
        test = None
        if arm.name != control:
            theirs = values[control]
            test = {
                "vs": control,
                "method": method,
                "p_worse_beyond_margin": welch_less(
                    mine["feedback"], theirs["feedback"], experiment.margin
                ),
                "feedback_diff": welch_difference(mine["feedback"], theirs["feedback"], 0.0, 1.0),
                "cost_diff_usd": welch_difference(mine["cost"], theirs["cost"], 0.0, math.inf),
            }
        arms.append(
            {
                "arm": arm.name,
                "router": arm.router,
                "weight": arm.weight,
                "expected_share": arm.weight / total_weight,
                "units": units[arm.name],
                "unit_share": units[arm.name] / total_units if total_units else None,
                "requests": len(data),
                "request_share": len(data) / total_requests if total_requests else None,
                "feedback_n": sum(1 for s in data if s.ratings),
                "explored": sum(1 for s in data if s.explored),
                **{
                    key: mean_interval(mine[metric], *RANGES[metric])
                    for key, metric in (
                        ("cost_per_request_usd", "cost"),
                        ("feedback", "feedback"),
                        ("latency_ms", "latency"),
                        ("fallback_rate", "fallback"),
                    )
                },
                "test": test,
            }
        )
    srm = _sample_ratio_p(
        [units[a.name] for a in experiment.arms], [a.weight for a in experiment.arms]
    )
    balance = {"unit": experiment.unit, "units": total_units, "requests": total_requests}
    return {
        "method": method,
        "balance": {**balance, "sample_ratio_p": srm},
        "warnings": _warnings(experiment, arms, srm),
        "results": arms,
    }


def _warnings(experiment: Experiment, arms: list[dict[str, Any]], srm: float | None) -> list[str]:
    unit, found = experiment.unit, []
    if experiment.forced:
        found.append(
            f"started by force with {_count(experiment.tenants_at_start or 0, 'tenant')} under "
            "unit tenant: each arm holds a few tenants, so its intervals are wide"
        )
    filled = [a for a in arms if a["units"]]
    if len(filled) == 1:
        hint = (
            ": under unit tenant a tenant keeps one arm, so a single tenant sends all its "
            "traffic to one arm; use unit request"
            if unit == "tenant"
            else ""
        )
        found.append(
            f"every {unit} so far ({filled[0]['units']}) is in arm {filled[0]['arm']}: "
            f"nothing can be compared{hint}"
        )
    elif unit != "request":
        for arm in filled:
            if arm["units"] < 2:
                found.append(
                    f"arm {arm['arm']} has 1 {unit}: the tests over {unit} means need 2 or more"
                )
    if srm is not None and srm < SRM_ALPHA:
        shares = ", ".join(f"{a['arm']} {a['units']}" for a in arms)
        found.append(
            f"the {unit}s per arm ({shares}) are unlikely under the weights "
            f"(sample-ratio p = {srm:.2g}): check how requests reach the arms"
        )
    explored = sum(a["explored"] for a in arms)
    if explored:
        found.append(
            f"exploration sent {explored} requests in the arms to a random model "
            "(SWITCHBOARD_EXPERIMENT_EXPLORATION): it dilutes the difference; see explored per arm"
        )
    return found


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _interval_text(test: dict[str, float | None], digits: int) -> str:
    return (
        f"{test['diff']:+.{digits}f} (95 % interval {test['ci_low']:+.{digits}f} to "
        f"{test['ci_high']:+.{digits}f})"
    )


def _excludes_zero(test: dict[str, float | None]) -> bool:
    low, high = test["ci_low"], test["ci_high"]
    return low is not None and high is not None and (low > 0 or high < 0)


def _quality_settled(test: dict[str, float | None], margin: float) -> bool:
    """Better, worse, or equal within the margin: the feedback interval says which."""
    low, high = test["ci_low"], test["ci_high"]
    if low is None or high is None:
        return False
    return _excludes_zero(test) or (margin > 0 and -margin <= low and high <= margin)


def stop_reason(experiment: Experiment, summary: dict[str, Any]) -> str | None:
    """Why the experiment should stop now, or None. In order: an arm worse than the control
    beyond the margin (one-sided p < 0.05); every arm settled on both quality (its feedback
    interval excludes 0, or lies within +-margin) and cost (its cost interval excludes 0); or
    ``max_requests`` reached. The first two need ``min_feedback`` rated requests in the arm and
    in the control."""
    control, others = summary["results"][0], summary["results"][1:]

    def enough(arm: dict[str, Any]) -> bool:
        return min(arm["feedback_n"], control["feedback_n"]) >= experiment.min_feedback

    for arm in others:
        p = arm["test"]["p_worse_beyond_margin"]
        if enough(arm) and p is not None and p < ALPHA:
            return (
                f"arm {arm['arm']} is worse than {control['arm']} by more than "
                f"{experiment.margin} in feedback (Welch one-sided p = {p:.4f}, "
                f"{arm['test']['method']})"
            )
    settled = [
        a
        for a in others
        if enough(a)
        and _quality_settled(a["test"]["feedback_diff"], experiment.margin)
        and _excludes_zero(a["test"]["cost_diff_usd"])
    ]
    if others and len(settled) == len(others):
        parts = [
            f"{a['arm']} against {control['arm']}: feedback "
            f"{_interval_text(a['test']['feedback_diff'], 3)}, cost per request "
            f"{_interval_text(a['test']['cost_diff_usd'], 8)} USD"
            for a in settled
        ]
        return "decided: " + "; ".join(parts)
    total = summary["balance"]["requests"]
    if experiment.max_requests is not None and total >= experiment.max_requests:
        return f"reached max_requests ({total} of {experiment.max_requests}) before a decision"
    return None


class ExperimentStore:
    def __init__(self, engine: AsyncEngine, refresh_s: float = 2.0):
        self.engine = engine
        self._running = Refreshing(self._read_running, refresh_s)

    async def running(self) -> Experiment | None:
        """The running experiment (cached per process like the budgets)."""
        return await self._running.get()

    async def _read_running(self) -> Experiment | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(experiments.select().where(experiments.c.status == "running"))
            ).first()
        return Experiment.from_row(row) if row else None

    async def active_tenants(self) -> int:
        """Tenants that can take part: with an unrevoked API key or traffic in ACTIVE_DAYS."""
        keyed = sa.select(api_keys.c.tenant_id).where(api_keys.c.revoked_at.is_(None))
        recent = sa.select(requests.c.tenant_id).where(
            requests.c.created_at >= now() - timedelta(days=ACTIVE_DAYS)
        )
        either = sa.union(keyed, recent).subquery()
        async with self.engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(either)) or 0)

    async def start(
        self,
        name: str,
        arms: list[Arm],
        unit: str,
        margin: float,
        min_feedback: int,
        *,
        max_requests: int | None = None,
        force: bool = False,
        min_tenants: int = MIN_TENANTS,
    ) -> Experiment:
        check_arms(arms)
        if unit not in UNITS:
            raise InvalidExperiment(f"unit must be one of {', '.join(UNITS)}", "unit")
        if not name.strip() or len(name) > 200 or ":" in name:
            raise InvalidExperiment("name: 1 to 200 characters, no ':'", "name")
        if not 0 <= margin <= 1:
            raise InvalidExperiment("margin must be between 0 and 1 (feedback's scale)", "margin")
        if min_feedback < 2:
            raise InvalidExperiment("min_feedback must be at least 2", "min_feedback")
        if max_requests is not None and max_requests < 2:
            raise InvalidExperiment("max_requests must be at least 2", "max_requests")
        tenants = await self.active_tenants() if unit == "tenant" else None
        forced = tenants is not None and tenants < min_tenants
        if tenants is not None and forced and not force:
            raise InvalidExperiment(
                f"unit tenant needs at least {min_tenants} tenants "
                f"(SWITCHBOARD_EXPERIMENT_MIN_TENANTS) and {_count(tenants, 'tenant')} "
                f"{'has' if tenants == 1 else 'have'} an active key or "
                f"traffic in the last {ACTIVE_DAYS} days: a tenant keeps one arm, so a few "
                "tenants give each arm a few clusters to compare, and a single tenant sends all "
                "its traffic to one arm. Use unit request (each request drawn) or user, or force "
                "it (force: true, --force)",
                "unit",
                "too_few_tenants",
            )
        if await self.running() is not None or await self._any_running():
            raise InvalidExperiment("an experiment is already running: stop it first", "name")
        async with self.engine.begin() as conn:
            created = await insert_ignore(
                conn,
                experiments,
                name=name,
                arms=[a.__dict__ for a in arms],
                unit=unit,
                margin=margin,
                min_feedback=min_feedback,
                max_requests=max_requests,
                forced=forced,
                tenants_at_start=tenants,
                status="running",
                started_at=now(),
            )
            if not created:
                raise InvalidExperiment(f"an experiment named {name!r} exists", "name")
            row = (await conn.execute(experiments.select().where(experiments.c.name == name))).one()
        self._running.invalidate()
        return Experiment.from_row(row)

    async def _any_running(self) -> bool:
        async with self.engine.connect() as conn:
            count = await conn.scalar(
                sa.select(sa.func.count()).where(experiments.c.status == "running")
            )
        return bool(count)

    async def stop(self, name: str, reason: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                experiments.update()
                .where((experiments.c.name == name) & (experiments.c.status == "running"))
                .values(status="stopped", stopped_at=now(), stop_reason=reason)
            )
        self._running.invalidate()
        return bool(result.rowcount)

    async def get(self, name: str) -> Experiment | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(experiments.select().where(experiments.c.name == name))
            ).first()
        return Experiment.from_row(row) if row else None

    async def all(self) -> list[Experiment]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(experiments.select().order_by(experiments.c.id.desc()))
            return [Experiment.from_row(r) for r in rows]

    async def served(self, experiment: Experiment, tenant_id: int | None = None) -> list[Served]:
        """The experiment's requests with their unit and ratings (a tenant's own, if given)."""
        prefix = f"{experiment.name}:"
        where: Any = requests.c.arm.like(prefix + "%")
        if tenant_id is not None:
            where = where & (requests.c.tenant_id == tenant_id)
        fallback = requests.c.served_model.is_not(None) & (
            requests.c.served_model != requests.c.chosen_model
        )
        query = sa.select(
            requests.c.id,
            requests.c.arm,
            requests.c.tenant_id,
            requests.c.end_user,
            requests.c.cost_usd,
            requests.c.latency_ms,
            sa.case((fallback, 1.0), else_=0.0),
            requests.c.explored,
            feedback.c.score,
        ).select_from(requests.outerjoin(feedback, feedback.c.request_id == requests.c.id))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.where(where))).all()
        names = {a.name for a in experiment.arms}
        found: dict[str, Served] = {}
        for request_id, arm, tenant, user, cost, latency, fell_back, explored, score in rows:
            name = arm.removeprefix(prefix)
            if name not in names:
                continue
            entry = found.get(request_id)
            if entry is None:  # a request rated several times: one row per rating
                entry = found[request_id] = Served(
                    name,
                    unit_key(experiment.unit, request_id, tenant, user),
                    None if cost is None else float(cost),
                    float(latency),
                    float(fell_back),
                    bool(explored),
                )
            if score is not None:
                entry.ratings.append(float(score))
        return list(found.values())

    async def results(self, experiment: Experiment, tenant_id: int | None = None) -> dict:
        """Per-arm statistics, the balance, and each arm's comparison with the control."""
        served = await self.served(experiment, tenant_id)
        return {**experiment.describe(), **summarize(experiment, served)}

    async def check_stop(self) -> str | None:
        """Stop the running experiment if a stop rule says so (``stop_reason``); the reason."""
        experiment = await self.running()
        if experiment is None:
            return None
        reason = stop_reason(experiment, await self.results(experiment))
        if reason is not None:
            await self.stop(experiment.name, reason)
        return reason
