"""Budget pacing: lower the routing threshold just enough that a period's spend lands on its
budget at the period's end, instead of running out early.

For a paced budget the controller looks at the scope's recent traffic:

- the traffic forecast: requests per second over the last hour of the period (the last hour
  before it, too, in its first ten minutes), times the seconds left in the period;
- the cost curve: for every threshold on a grid, the mean expected cost of the model the router
  would have chosen for each recent auto-routed request (their candidates, probabilities and
  expected costs are in the ledger), scaled by the ratio of actual to expected cost seen on
  those requests; requests that named their model add their mean cost unchanged.

If the spend so far plus the forecast at the default threshold stays within the limit, nothing
changes. Otherwise the threshold becomes the highest grid value whose projection fits (never
below ``FLOOR``). The state (threshold, projections, forecast) is stored on the budget, so every
replica applies it and the API and dashboard show it. Upkeep recomputes it every
``SWITCHBOARD_UPKEEP_INTERVAL_S`` (30 s by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.budgets import Budget, BudgetStore, period_window, utc
from service.ledger import now
from service.schemas import AUTO_MODEL
from service.tables import requests, tenants

FLOOR = 0.05
GRID_STEP = 0.01
HISTORY_REQUESTS = 500
RATE_WINDOW = timedelta(hours=1)
MIN_PERIOD_DATA = timedelta(minutes=10)


def chosen_cost(candidates: list[dict[str, Any]], threshold: float) -> float:
    """Expected cost of the model the decision rule picks at ``threshold``: the cheapest whose
    P(pass) clears it, else the most likely to pass (among the candidates the rule could
    choose: not those the uncalibrated policy left to exploration)."""
    priced = [
        c for c in candidates if c.get("expected_cost_usd") is not None and c.get("decidable", True)
    ]
    if not priced:
        return 0.0
    clearing = [c for c in priced if c["p_pass"] >= threshold]
    if clearing:
        return float(min(c["expected_cost_usd"] for c in clearing))
    return float(max(priced, key=lambda c: c["p_pass"])["expected_cost_usd"])


@dataclass
class Traffic:
    """What the controller knows of a scope's recent requests."""

    rate_per_s: float
    auto_candidates: list[list[dict[str, Any]]]  # recent auto-routed requests' candidates
    auto_share: float  # share of requests routed by switchboard/auto
    fixed_cost_usd: float  # mean cost of a request that named its model
    calibration: float  # actual cost / expected cost, on recent auto-routed requests


def pace(
    spent_usd: float,
    limit_usd: float,
    seconds_left: float,
    traffic: Traffic,
    default_threshold: float,
) -> dict[str, Any]:
    """The controller's decision for one budget now (a pure function: simulated in tests)."""
    forecast = traffic.rate_per_s * max(seconds_left, 0.0)
    grid = np.round(np.arange(FLOOR, default_threshold + 1e-9, GRID_STEP), 4)
    if traffic.auto_candidates:
        curve = np.array(
            [np.mean([chosen_cost(c, t) for c in traffic.auto_candidates]) for t in grid]
        )
    else:
        curve = np.zeros(len(grid))
    per_request = (
        traffic.auto_share * traffic.calibration * curve
        + (1 - traffic.auto_share) * traffic.fixed_cost_usd
    )
    projected = spent_usd + forecast * per_request
    state: dict[str, Any] = {
        "forecast_requests": round(forecast, 1),
        "rate_per_hour": round(traffic.rate_per_s * 3600, 2),
        "projected_at_default_usd": float(projected[-1]),
        "projected_at_floor_usd": float(projected[0]),
        "history_requests": len(traffic.auto_candidates),
    }
    if projected[-1] <= limit_usd or not traffic.auto_candidates:
        return state | {
            "status": "on_track",
            "threshold": None,
            "projected_spend_usd": float(projected[-1]),
        }
    fits = np.flatnonzero(projected <= limit_usd)
    if len(fits) == 0:
        return state | {
            "status": "over_pace",
            "threshold": float(grid[0]),
            "projected_spend_usd": float(projected[0]),
        }
    best = int(fits.max())
    return state | {
        "status": "paced",
        "threshold": float(grid[best]),
        "projected_spend_usd": float(projected[best]),
    }


class Pacer:
    """Recomputes every paced budget's state from the ledger (run by each replica's upkeep)."""

    def __init__(self, engine: AsyncEngine, store: BudgetStore, default_threshold: float):
        self.engine = engine
        self.store = store
        self.default_threshold = default_threshold

    async def _scope_filter(self, conn: Any, scope: str) -> Any:
        kind, _, value = scope.partition(":")
        if kind == "tenant":
            tenant_id = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.name == value))
            return requests.c.tenant_id == (tenant_id if tenant_id is not None else -1)
        if kind == "key":
            return requests.c.api_key_id == int(value)
        return sa.true()

    async def traffic(self, budget: Budget, at: datetime) -> Traffic:
        start, _ = period_window(budget.period, at)
        since = max(start, at - RATE_WINDOW)
        if at - since < MIN_PERIOD_DATA:  # a period just begun: its last hour says more
            since = at - RATE_WINDOW
        async with self.engine.connect() as conn:
            where = await self._scope_filter(conn, budget.scope)
            count = await conn.scalar(
                sa.select(sa.func.count()).where(where, requests.c.created_at >= since)
            )
            recent = (
                await conn.execute(
                    sa.select(
                        requests.c.requested_model,
                        requests.c.candidates,
                        requests.c.chosen_model,
                        requests.c.served_model,
                        requests.c.cost_usd,
                    )
                    .where(where, requests.c.status == "ok")
                    .order_by(requests.c.created_at.desc())
                    .limit(HISTORY_REQUESTS)
                )
            ).all()
        seconds = max((at - since).total_seconds(), 1.0)
        auto = [r for r in recent if r.requested_model in (None, AUTO_MODEL) and r.candidates]
        named = [r for r in recent if r not in auto and r.cost_usd is not None]
        expected = actual = 0.0
        for r in auto:
            chosen = next((c for c in r.candidates if c["model"] == r.served_model), None)
            if chosen and chosen.get("expected_cost_usd") and r.cost_usd is not None:
                expected += chosen["expected_cost_usd"]
                actual += r.cost_usd
        return Traffic(
            rate_per_s=float(count or 0) / seconds,
            auto_candidates=[list(r.candidates) for r in auto],
            auto_share=len(auto) / len(recent) if recent else 1.0,
            fixed_cost_usd=float(np.mean([r.cost_usd for r in named])) if named else 0.0,
            calibration=actual / expected if expected > 0 else 1.0,
        )

    async def update(self, budget: Budget) -> dict[str, Any]:
        at = now()
        window = await self.store.window(budget, at)
        assert window.resets_at is not None
        traffic = await self.traffic(budget, at)
        state = pace(
            window.spent_usd,
            budget.limit_usd,
            (utc(window.resets_at) - at).total_seconds(),
            traffic,
            self.default_threshold,
        )
        state["updated_at"] = at.isoformat()
        await self.store.save_pacing_state(budget.id, state)
        return state

    async def update_all(self) -> None:
        for budget in await self.store.all():
            if budget.pacing and budget.period != "total" and not budget.scope.startswith("model:"):
                await self.update(budget)
        self.store.invalidate()
