"""The spend-spike breaker: a scope (everyone, or one tenant) whose spend over the last window
runs far above its trailing average is stopped (or degraded to cheap models) until it cools down
or an operator resets it.

Every replica's upkeep runs ``check``: for the last ``spike_window_s`` it compares each scope's
spend with its average per window over the ``spike_baseline_s`` before it, and trips the scope
when the window's spend is at least ``spike_min_usd`` and more than ``spike_multiple`` times
that average (a scope with no history trips on ``spike_min_usd`` alone). The open breaker is a
row (one per scope, so concurrent replicas trip it once) that every replica reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.alerts import Alerts
from service.budgets import utc
from service.config import Settings
from service.ledger import insert_ignore, now
from service.refreshing import Refreshing
from service.tables import requests, spend_breakers, tenants

GLOBAL = "global"


class SpendBreaker:
    def __init__(self, engine: AsyncEngine, settings: Settings, alerts: Alerts):
        self.engine = engine
        self.settings = settings
        self.alerts = alerts
        self._open = Refreshing(self._read_open, settings.budget_refresh_s)

    def invalidate(self) -> None:
        self._open.invalidate()

    async def open_scopes(self) -> dict[str, dict[str, Any]]:
        """The breakers open now, by scope (cached per process like the budgets)."""
        return await self._open.get()

    async def _read_open(self) -> dict[str, dict[str, Any]]:
        at = now()
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(spend_breakers.select())]
        return {r["scope"]: r for r in rows if r["open_until"] is None or utc(r["open_until"]) > at}

    async def _spend_by_scope(self, start: datetime, end: datetime) -> dict[str, float]:
        query = (
            sa.select(tenants.c.name, sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0))
            .join(tenants, tenants.c.id == requests.c.tenant_id)
            .where(requests.c.created_at >= start, requests.c.created_at < end)
            .group_by(tenants.c.name)
        )
        async with self.engine.connect() as conn:
            per_tenant = {
                f"tenant:{name}": float(spend) for name, spend in await conn.execute(query)
            }
        return {GLOBAL: sum(per_tenant.values()), **per_tenant}

    async def check(self) -> list[str]:
        """Trip every scope whose spend spikes now; returns the scopes newly tripped."""
        s = self.settings
        if not s.spike_multiple:  # 0 (or None) turns the breaker off
            return []
        at = now()
        window_start = at - timedelta(seconds=s.spike_window_s)
        recent = await self._spend_by_scope(window_start, at)
        history = await self._spend_by_scope(
            window_start - timedelta(seconds=s.spike_baseline_s), window_start
        )
        tripped = []
        for scope, spend in recent.items():
            average = history.get(scope, 0.0) * s.spike_window_s / s.spike_baseline_s
            if spend < s.spike_min_usd or spend <= s.spike_multiple * average:
                continue
            reason = (
                f"spend of ${spend:.4f} in the last {s.spike_window_s:g} s is over "
                f"{s.spike_multiple:g}x its trailing average of ${average:.4f} per window"
            )
            if await self.trip(scope, reason, spend, average):
                tripped.append(scope)
        return tripped

    async def trip(self, scope: str, reason: str, spend: float, average: float) -> bool:
        at = now()
        open_until = at + timedelta(seconds=self.settings.spike_cooldown_s)
        async with self.engine.begin() as conn:
            await conn.execute(
                spend_breakers.delete().where(
                    (spend_breakers.c.scope == scope) & (spend_breakers.c.open_until < at)
                )
            )
            created = await insert_ignore(
                conn,
                spend_breakers,
                scope=scope,
                tripped_at=at,
                open_until=open_until,
                reason=reason,
            )
        self.invalidate()
        if created:
            await self.alerts.create(
                f"spike:{scope}:{at.isoformat()}",
                "spend_spike",
                scope,
                f"spend breaker tripped for {scope}: {reason}; "
                f"{self.settings.spike_action} until {open_until.isoformat()}",
                {
                    "type": "spend_spike",
                    "scope": scope,
                    "window_spend_usd": spend,
                    "average_per_window_usd": average,
                    "action": self.settings.spike_action,
                    "open_until": open_until.isoformat(),
                },
                webhook_url=self.settings.alert_webhook_url,
            )
        return created

    async def reset(self, scope: str) -> bool:
        reset = await reset_breaker(self.engine, scope)
        self.invalidate()  # after the write: a read meanwhile must not keep it open here
        return reset


async def reset_breaker(engine: AsyncEngine, scope: str) -> bool:
    """Close the breaker of ``scope``; False if none was open."""
    async with engine.begin() as conn:
        deleted = await conn.execute(spend_breakers.delete().where(spend_breakers.c.scope == scope))
    return bool(deleted.rowcount)
