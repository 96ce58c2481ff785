"""Online A/B experiments between routers: arms with weights, stable assignment, per-arm
statistics with confidence intervals and a significance test, and automatic stopping.

One experiment runs at a time. Each auto-routed request whose caller did not pick a router is
assigned an arm by a stable hash of the experiment name and its unit (the tenant, or the
request's ``user`` field, so a conversation stays on one arm); the arm names the router that
serves it: ``champion`` (the learned router in service), ``challenger`` (the router in
``SWITCHBOARD_CHALLENGER_DIR``) or ``heuristic``. The first arm is the control. Requests record
``<experiment>:<arm>`` in the ledger's ``arm`` column.

Per arm: requests, cost per request, feedback quality, latency and fallback rate, each with a
95 % interval; each other arm's feedback is compared with the control's by Welch's t-test. An
arm whose feedback is worse than the control's by more than ``margin`` with p < 0.05 (one-sided)
once both have ``min_feedback`` ratings stops the experiment (upkeep checks it every
``SWITCHBOARD_UPKEEP_INTERVAL_S``, 30 s by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger import Principal, insert_ignore, now
from service.refreshing import Refreshing
from service.routing.exploration import stable_unit
from service.tables import experiments, feedback, requests

ROUTERS = ("champion", "challenger", "heuristic")
UNITS = ("tenant", "user")
ALPHA = 0.05


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
        )

    def assign(self, principal: Principal, user: str | None) -> Arm:
        """The arm of this caller: fixed by the experiment and the unit, weighted."""
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
        arms.append(Arm(label or router, router, float(weight or 1)))
    check_arms(arms)
    return arms


def check_arms(arms: list[Arm]) -> None:
    if len(arms) < 2:
        raise ValueError("an experiment needs at least two arms")
    if len({a.name for a in arms}) != len(arms):
        raise ValueError("arm names must differ")
    for arm in arms:
        if arm.router not in ROUTERS:
            raise ValueError(f"arm {arm.name}: router must be one of {', '.join(ROUTERS)}")
        if not arm.weight > 0:
            raise ValueError(f"arm {arm.name}: weight must be positive")


def mean_interval(
    values: list[float], low: float = -math.inf, high: float = math.inf
) -> dict[str, float | None]:
    """Mean and 95 % normal interval, clipped to the values' possible range."""
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None}
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None}
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return {"mean": mean, "ci_low": max(low, mean - half), "ci_high": min(high, mean + half)}


def welch_less(a: list[float], b: list[float], margin: float) -> float | None:
    """One-sided p-value that mean(a) < mean(b) - margin (Welch's t-test)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    if va + vb == 0:
        return 0.0 if np.mean(a) < np.mean(b) - margin else 1.0
    t = (np.mean(a) - (np.mean(b) - margin)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(stats.t.cdf(t, dof))


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

    async def start(
        self, name: str, arms: list[Arm], unit: str, margin: float, min_feedback: int
    ) -> Experiment:
        check_arms(arms)
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}")
        if not name.strip() or len(name) > 200 or ":" in name:
            raise ValueError("name: 1 to 200 characters, no ':'")
        if await self.running() is not None or await self._any_running():
            raise ValueError("an experiment is already running: stop it first")
        async with self.engine.begin() as conn:
            created = await insert_ignore(
                conn,
                experiments,
                name=name,
                arms=[a.__dict__ for a in arms],
                unit=unit,
                margin=margin,
                min_feedback=min_feedback,
                status="running",
                started_at=now(),
            )
            if not created:
                raise ValueError(f"an experiment named {name!r} exists")
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

    async def results(self, experiment: Experiment, tenant_id: int | None = None) -> dict:
        """Per-arm statistics, and each arm's test against the control."""
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
            requests.c.cost_usd,
            requests.c.latency_ms,
            sa.case((fallback, 1.0), else_=0.0),
            feedback.c.score,
        ).select_from(requests.outerjoin(feedback, feedback.c.request_id == requests.c.id))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.where(where))).all()
        seen: set[str] = set()
        per_arm: dict[str, dict[str, list[float]]] = {
            a.name: {"cost": [], "latency": [], "fallback": [], "feedback": []}
            for a in experiment.arms
        }
        for request_id, arm, cost, latency, fell_back, score in rows:
            data = per_arm.get(arm.removeprefix(prefix))
            if data is None:
                continue
            if score is not None:
                data["feedback"].append(float(score))
            if request_id in seen:  # a request rated several times: one row per rating
                continue
            seen.add(request_id)
            data["latency"].append(float(latency))
            data["fallback"].append(float(fell_back))
            if cost is not None:
                data["cost"].append(float(cost))
        control = experiment.arms[0].name
        arms = []
        for arm in experiment.arms:
            data = per_arm[arm.name]
            test = None
            if arm.name != control:
                p = welch_less(data["feedback"], per_arm[control]["feedback"], experiment.margin)
                test = {"vs": control, "p_worse_beyond_margin": p}
            arms.append(
                {
                    "arm": arm.name,
                    "router": arm.router,
                    "weight": arm.weight,
                    "requests": len(data["latency"]),
                    "feedback_n": len(data["feedback"]),
                    "cost_per_request_usd": mean_interval(data["cost"], 0.0),
                    "feedback": mean_interval(data["feedback"], 0.0, 1.0),
                    "latency_ms": mean_interval(data["latency"], 0.0),
                    "fallback_rate": mean_interval(data["fallback"], 0.0, 1.0),
                    "test": test,
                }
            )
        return {**experiment.describe(), "results": arms}

    async def check_stop(self) -> str | None:
        """Stop the running experiment if an arm is significantly worse; the reason if so."""
        experiment = await self.running()
        if experiment is None:
            return None
        results = await self.results(experiment)
        control = results["results"][0]
        for arm in results["results"][1:]:
            p = (arm["test"] or {}).get("p_worse_beyond_margin")
            enough = min(arm["feedback_n"], control["feedback_n"]) >= experiment.min_feedback
            if enough and p is not None and p < ALPHA:
                reason = (
                    f"arm {arm['arm']} is worse than {control['arm']} by more than "
                    f"{experiment.margin} in feedback (Welch one-sided p = {p:.4f})"
                )
                await self.stop(experiment.name, reason)
                return reason
        return None
