"""The gateway's side of budgets: which budgets a call counts against, holding its worst-case
cost before the upstream call, settling the actual charge with the ledger row, and steering
auto-routed requests when money runs short.

Steering (for ``switchboard/auto`` only; explicit models run until a hard cap stops them):

- soft landing: a budget with ``soft_landing_at`` whose remaining share of the limit falls below
  it lowers the threshold to its ``soft_threshold`` and keeps to the cheaper half of the
  candidates (expected cost at most the median);
- pacing: a paced budget's controller state caps the threshold (service.pacing);
- an open spend-spike breaker on the caller's tenant or on everyone refuses the request (402
  ``spend_spike``) or, with ``SWITCHBOARD_SPIKE_ACTION=degrade``, steers like a soft landing at
  ``SWITCHBOARD_DEGRADED_THRESHOLD``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.alerts import Alerts
from service.budget_leases import BudgetLeases, Hold, Settlement
from service.budgets import Budget, BudgetExceeded, BudgetStore, Window, utc
from service.catalog import Catalog
from service.config import Settings
from service.costs import bound_output, budget_charge, unbounded_cost_fields, worst_case_cost
from service.errors import InvalidRequest, PaymentRequired, Unavailable
from service.ledger import Principal
from service.record import RequestRecord
from service.refreshing import Refreshing
from service.spend_breaker import SpendBreaker

log = logging.getLogger("switchboard")
LEDGER_RETRY_AFTER_S = 5.0


@dataclass
class Steering:
    """How spend controls bend one auto-routed request."""

    threshold_cap: float | None = None
    cheaper_half: bool = False
    reasons: list[str] = field(default_factory=list)

    def tighten(self, cap: float | None, cheaper_half: bool, reason: str) -> None:
        if cap is not None:
            self.threshold_cap = cap if self.threshold_cap is None else min(self.threshold_cap, cap)
        self.cheaper_half = self.cheaper_half or cheaper_half
        self.reasons.append(reason)


class SpendControl:
    def __init__(
        self,
        store: BudgetStore,
        alerts: Alerts,
        catalog: Catalog,
        settings: Settings,
        breaker: SpendBreaker,
    ):
        self.store = store
        self.alerts = alerts
        self.catalog = catalog
        self.settings = settings
        self.breaker = breaker
        self.leases = BudgetLeases(
            store.engine, settings.request_timeout_s, settings.upkeep_interval_s
        )
        self._windows: dict[int, tuple[Budget, Refreshing[Window]]] = {}

    async def _window(self, budget: Budget) -> Window:
        """The budget's current window, cached like the budget list (afresh when the budget's
        settings change)."""
        cached = self._windows.get(budget.id)
        if cached is None or cached[0] != budget:
            window = Refreshing(partial(self.store.window, budget), self.settings.budget_refresh_s)
            cached = self._windows[budget.id] = (budget, window)
        return await cached[1].get()

    async def refuse_if_breaker_open(self, principal: Principal) -> None:
        """402 ``spend_spike`` while a breaker that rejects is open on the caller's tenant or
        on everyone (any request, named model or not)."""
        if self.settings.spike_action != "reject":
            return
        open_breakers = await self.breaker.open_scopes()
        for scope in ("global", f"tenant:{principal.tenant}"):
            breaker = open_breakers.get(scope)
            if breaker is not None:
                until = breaker["open_until"]
                raise PaymentRequired(
                    f"the spend breaker for {scope} is open: {breaker['reason']}; it closes "
                    f"{'at ' + utc(until).isoformat() if until else 'when an operator resets it'}",
                    param="budget",
                    code="spend_spike",
                )

    async def steer(self, principal: Principal) -> Steering:
        """The steering for the caller's next auto-routed request."""
        steering = Steering()
        if self.settings.spike_action == "degrade":
            open_breakers = await self.breaker.open_scopes()
            for scope in ("global", f"tenant:{principal.tenant}"):
                if scope in open_breakers:
                    reason = f"spend_spike {scope}"
                    steering.tighten(self.settings.degraded_threshold, True, reason)
        for budget in await self.applicable(principal, None):
            if budget.scope.startswith("model:"):
                continue
            if budget.soft_landing_at is not None and budget.limit_usd > 0:
                window = await self._window(budget)
                if window.remaining_usd / budget.limit_usd < budget.soft_landing_at:
                    steering.tighten(budget.soft_threshold, True, f"soft_landing {budget.scope}")
            state = budget.pacing_state or {}
            if budget.pacing and state.get("threshold") is not None:
                steering.tighten(float(state["threshold"]), False, f"pacing {budget.scope}")
        return steering

    async def applicable(self, principal: Principal, model: str | None) -> list[Budget]:
        return [b for b in await self.store.all() if b.applies(principal, model)]

    async def bound(
        self,
        principal: Principal,
        models: list[str],
        body: dict[str, Any],
        field: str = "max_tokens",
    ) -> dict[str, Any]:
        """The upstream body, with its output limit ``field`` set if a budget may apply and it
        has none."""
        budgets = await self.store.all()
        if any(b.applies(principal, m) for b in budgets for m in models):
            return bound_output(body, self.settings, field)
        return body

    async def hold(self, record: RequestRecord, model: str, body: dict[str, Any]) -> Hold | None:
        """Reserve the call's worst-case cost on every budget it counts against (402 if one has
        no room, 503 if the ledger cannot be written: no call without its hold); None when no
        budget applies."""
        applicable = await self.applicable(record.principal, model)
        if not applicable:
            return None
        unbounded = unbounded_cost_fields(body)
        if unbounded:
            raise InvalidRequest(
                f"{', '.join(unbounded)}: the upstream charges for these beyond any token price, "
                "so a budget cannot bound the request's cost; send it without them",
                param=unbounded[0],
                code="unbounded_cost",
            )
        info = self.catalog.get(model) if model in self.catalog else None
        try:
            amount = worst_case_cost(info, body, self.settings)
        except LookupError:
            raise PaymentRequired(
                f"{model} has no price in the catalog and a budget applies; budgets block "
                "unpriced models (SWITCHBOARD_UNPRICED_POLICY=fallback prices them instead)",
                param="model",
                code="unpriced_model",
            ) from None
        try:
            return await self.leases.hold(applicable, amount)
        except BudgetExceeded as exceeded:  # not spend: a notice, at most hourly, no threshold
            await self.alerts.budget_refused(exceeded.window, amount)
            raise
        except OperationalError as error:  # read-only, locked or away
            log.warning("could not hold the budgets of request %s: %s", record.id, error.orig)
            raise Unavailable(
                "the ledger cannot be written just now, so the budget this request counts "
                "against cannot be held; retry shortly",
                code="ledger_unavailable",
                retry_after_s=LEDGER_RETRY_AFTER_S,
            ) from None

    def release(self, hold: Hold) -> None:
        """Give a failed call's hold back to its leases."""
        self.leases.release(hold)

    def charge(self, record: RequestRecord) -> float:
        """What the call costs its budgets: nothing unless an answer (or part of one) came."""
        if record.served_model is None:
            return 0.0
        return budget_charge(
            record.cost_usd, record.prompt_tokens, record.completion_tokens, self.settings
        )

    async def settle(self, conn: AsyncConnection, records: list[RequestRecord]) -> Settlement:
        """In the ledger's transaction: charge these calls to their budgets (``settled`` once
        it commits)."""
        charges = [(r.hold, r.charged_usd or 0.0) for r in records if r.hold is not None]
        return await self.leases.settle(conn, charges)

    def settled(self, settlement: Settlement) -> None:
        self.leases.settled(settlement)
