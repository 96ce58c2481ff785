"""Budgets: scopes, calendar periods, and reservations that hold under concurrency.

A budget has a scope (``global``, ``tenant:NAME``, ``key:ID``, ``model:ID``), a period (``day``,
``week``, ``month``: calendar periods in UTC, weeks from Monday; or ``total``) and a hard limit.
Each period has a window row with ``spent_usd`` and ``reserved_usd``.

Before an upstream call the gateway holds the call's worst-case cost on every budget that
applies; room is taken from the database only by a conditional UPDATE (``spent + reserved +
amount <= limit``) that takes the whole amount or nothing: PostgreSQL re-checks the condition on
the newest row version after waiting for a concurrent writer, SQLite runs one writer at a time,
so any number of processes can never hold more than the limit. Processes take that room in
slices (leases, service.budget_leases) and hand it to their calls in memory. After the call the
charge is settled in the same transaction as the request's ledger row (spend += the charge,
reserved -= the same). Each reservation is a row with an expiry, so a process that dies leaks
nothing: ``sweep`` releases expired ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.errors import PaymentRequired
from service.ledger import Principal, insert_ignore, now
from service.refreshing import Refreshing
from service.tables import budget_reservations, budget_windows, budgets

PERIODS = ("day", "week", "month", "total")
SCOPE_KINDS = ("tenant", "key", "model")
DEFAULT_ALERT_AT = (0.5, 0.8, 1.0)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPSILON_USD = 1e-12  # float slack when comparing sums of charges with a limit


def period_window(period: str, at: datetime) -> tuple[datetime, datetime | None]:
    """The start of ``period`` containing ``at`` and the time it resets (None for ``total``)."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        if start.month == 12:
            return start, start.replace(year=start.year + 1, month=1)
        return start, start.replace(month=start.month + 1)
    if period == "total":
        return EPOCH, None
    raise ValueError(f"period must be one of {', '.join(PERIODS)}")


def parse_scope(text: str) -> str:
    """``global``, ``tenant:NAME``, ``key:ID`` or ``model:ID``, normalized; ValueError if not."""
    text = text.strip()
    if text == "global":
        return text
    kind, separator, value = text.partition(":")
    if not separator or kind not in SCOPE_KINDS or not value.strip() or len(text) > 300:
        raise ValueError("scope must be global, tenant:NAME, key:ID or model:ID")
    if kind == "key" and not value.strip().isdigit():
        raise ValueError("a key scope is key:ID with the key's numeric id")
    return f"{kind}:{value.strip()}"


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Budget:
    id: int
    scope: str
    period: str
    limit_usd: float
    alert_at: tuple[float, ...] = DEFAULT_ALERT_AT
    webhook_url: str | None = None
    email: str | None = None
    soft_landing_at: float | None = None
    soft_threshold: float | None = None
    pacing: bool = False
    pacing_state: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Any) -> Budget:
        m = row._mapping
        return cls(
            id=m["id"],
            scope=m["scope"],
            period=m["period"],
            limit_usd=m["limit_usd"],
            alert_at=tuple(m["alert_at"] or ()),
            webhook_url=m["webhook_url"],
            email=m["email"],
            soft_landing_at=m["soft_landing_at"],
            soft_threshold=m["soft_threshold"],
            pacing=bool(m["pacing"]),
            pacing_state=m["pacing_state"],
        )

    def applies(self, principal: Principal, model: str | None) -> bool:
        """Whether a call by ``principal`` to ``model`` (None: any model) counts against it."""
        kind, _, value = self.scope.partition(":")
        if kind == "global":
            return True
        if kind == "tenant":
            return principal.tenant == value
        if kind == "key":
            return principal.api_key_id is not None and str(principal.api_key_id) == value
        return model is None or model == value

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "period": self.period,
            "limit_usd": self.limit_usd,
            "alert_at": list(self.alert_at),
            "webhook_url": self.webhook_url,
            "email": self.email,
            "soft_landing_at": self.soft_landing_at,
            "soft_threshold": self.soft_threshold,
            "pacing": self.pacing,
            "pacing_state": self.pacing_state,
        }


@dataclass
class Window:
    """One budget's current period: its spend and holds."""

    budget: Budget
    start: datetime
    resets_at: datetime | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    requests: int = 0

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.budget.limit_usd - self.spent_usd - self.reserved_usd)

    def status(self) -> dict[str, Any]:
        return {
            **self.budget.describe(),
            "spent_usd": self.spent_usd,
            "reserved_usd": self.reserved_usd,
            "remaining_usd": self.remaining_usd,
            "requests": self.requests,
            "period_start": self.start.isoformat(),
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
        }


class BudgetExceeded(PaymentRequired):
    """402 naming the budget, its limit, spend and reset time."""

    def __init__(self, window: Window, needed_usd: float):
        budget = window.budget
        resets = window.resets_at.isoformat() if window.resets_at else "never (a total budget)"
        super().__init__(
            f"budget {budget.scope} ({budget.period}) would be exceeded: limit "
            f"${budget.limit_usd:.6f}, spent ${window.spent_usd:.6f}, reserved "
            f"${window.reserved_usd:.6f}, this request may cost up to ${needed_usd:.6f}; "
            f"resets at {resets}",
            param="budget",
            headers={
                "x-switchboard-budget-scope": budget.scope,
                "x-switchboard-budget-period": budget.period,
                "x-switchboard-budget-limit-usd": f"{budget.limit_usd:.6f}",
                "x-switchboard-budget-spent-usd": f"{window.spent_usd:.6f}",
                **({"x-switchboard-budget-resets-at": resets} if window.resets_at else {}),
            },
        )
        self.window = window


class BudgetStore:
    """Budget definitions (cached per process for ``refresh_s``) and their windows."""

    def __init__(self, engine: AsyncEngine, refresh_s: float = 2.0):
        self.engine = engine
        self._budgets = Refreshing(self._read_all, refresh_s)

    # -- definitions --------------------------------------------------------------------------

    async def all(self) -> list[Budget]:
        return await self._budgets.get()

    async def _read_all(self) -> list[Budget]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(budgets.select().order_by(budgets.c.id))
            return [Budget.from_row(row) for row in rows]

    def invalidate(self) -> None:
        self._budgets.invalidate()

    async def put(
        self,
        scope: str,
        period: str,
        limit_usd: float,
        alert_at: tuple[float, ...] = DEFAULT_ALERT_AT,
        webhook_url: str | None = None,
        email: str | None = None,
        soft_landing_at: float | None = None,
        soft_threshold: float | None = None,
        pacing: bool = False,
    ) -> Budget:
        """Create the budget of (scope, period), or replace its settings; spend is kept."""
        scope = parse_scope(scope)
        period_window(period, now())
        if not limit_usd >= 0:
            raise ValueError("the limit must be a non-negative number of USD")
        if any(not 0 < a <= 10 for a in alert_at):
            raise ValueError("alert thresholds are fractions of the limit, above 0")
        values = {
            "limit_usd": float(limit_usd),
            "alert_at": sorted(set(alert_at)),
            "webhook_url": webhook_url,
            "email": email,
            "soft_landing_at": soft_landing_at,
            "soft_threshold": soft_threshold,
            "pacing": pacing,
            "updated_at": now(),
        }
        key = (budgets.c.scope == scope) & (budgets.c.period == period)
        async with self.engine.begin() as conn:
            inserted = await insert_ignore(
                conn, budgets, scope=scope, period=period, created_at=now(), **values
            )
            if not inserted:
                await conn.execute(budgets.update().where(key).values(**values))
            row = (await conn.execute(budgets.select().where(key))).one()
        self.invalidate()
        return Budget.from_row(row)

    async def delete(self, budget_id: int) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(
                budget_windows.delete().where(budget_windows.c.budget_id == budget_id)
            )
            await conn.execute(
                budget_reservations.delete().where(budget_reservations.c.budget_id == budget_id)
            )
            deleted = await conn.execute(budgets.delete().where(budgets.c.id == budget_id))
        self.invalidate()
        return bool(deleted.rowcount)

    async def find(self, scope: str, period: str | None = None) -> list[Budget]:
        scope = parse_scope(scope)
        async with self.engine.connect() as conn:
            query = budgets.select().where(budgets.c.scope == scope)
            if period is not None:
                query = query.where(budgets.c.period == period)
            return [Budget.from_row(row) for row in await conn.execute(query)]

    async def get(self, budget_id: int) -> Budget | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(budgets.select().where(budgets.c.id == budget_id))).first()
        return Budget.from_row(row) if row else None

    async def save_pacing_state(self, budget_id: int, state: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                budgets.update().where(budgets.c.id == budget_id).values(pacing_state=state)
            )

    # -- windows -------------------------------------------------------------------------------

    async def window(self, budget: Budget, at: datetime | None = None) -> Window:
        """The budget's current period with its spend and holds."""
        start, resets_at = period_window(budget.period, at or now())
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(budget_windows.select().where(window_row(budget.id, start)))
            ).first()
        window = Window(budget, start, resets_at)
        if row is not None:
            window.spent_usd = row.spent_usd
            window.reserved_usd = row.reserved_usd
            window.requests = row.requests
        return window

    async def sweep(self, owner: str | None = None) -> int:
        """Release holds past their expiry (their process died mid-request), or, with
        ``owner`` (an id prefix such as ``lease:<process>:``), every hold of a process known
        to be dead."""
        released: dict[tuple[int, datetime], float] = {}
        count = 0
        which = (
            budget_reservations.c.expires_at < now()
            if owner is None
            else budget_reservations.c.id.startswith(owner, autoescape=True)
        )
        async with self.engine.begin() as conn:
            expired = (
                await conn.execute(
                    budget_reservations.select()
                    .where(which)
                    .order_by(budget_reservations.c.budget_id, budget_reservations.c.id)
                )
            ).all()
            for row in expired:  # the hold rows first, then the windows: one lock order
                dropped = await conn.execute(
                    budget_reservations.delete().where(budget_reservations.c.id == row.id)
                )
                if dropped.rowcount == 1:
                    count += 1
                    key = (row.budget_id, row.period_start)
                    released[key] = released.get(key, 0.0) + row.amount_usd
            await unreserve(conn, released)
        return count


def window_row(budget_id: int, start: datetime) -> Any:
    """The condition selecting one budget's window row."""
    return (budget_windows.c.budget_id == budget_id) & (budget_windows.c.period_start == start)


async def unreserve(conn: AsyncConnection, released: dict[tuple[int, datetime], float]) -> None:
    """Give room held on windows, keyed (budget id, period start), back; in budget order, the
    order every transaction locks windows in."""
    for (budget_id, start), amount in sorted(released.items()):
        if amount > EPSILON_USD:
            await conn.execute(
                budget_windows.update()
                .where(window_row(budget_id, start))
                .values(reserved_usd=budget_windows.c.reserved_usd - amount)
            )
