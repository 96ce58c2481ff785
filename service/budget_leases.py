"""Budget holds without a database round trip per request: each process leases room.

A process reserves a slice of a budget window's room for itself (a lease: one row in
``budget_reservations``, counted in the window's ``reserved_usd`` like any hold), then hands that
room out to its own calls in memory. Only when a lease runs short does the process go to the
database, and then for a batch of holds at once, through the same conditional UPDATE that makes
the cap hard (``spent + reserved + amount <= limit``, all budgets or none). So the sum over all
processes of what they may spend is always within the limit, and a call needs no transaction
of its own to start.

- Size: a lease grows by room for ``LEASE_HOLDS`` calls of the size asked for (or, if more, by
  twice what its calls in flight hold, so that it keeps up with concurrency), but by at most
  ``LEASE_SHARE`` of the window's remaining room (never less than what the call needs). Near the
  limit, leases shrink to single holds and behave like per-request reservations; a refused call
  can find room stranded in another process's lease, at most about ``LEASE_SHARE`` of what was
  left when that lease grew.
- Growing: one grow at a time per process; calls that find their lease short while one runs
  wait for it and look again (no lock convoy). A lease whose free room falls below a quarter of
  ``LEASE_HOLDS`` holds or half of what is in flight is refilled in the background, ahead of
  need, so that under steady load calls do not wait for the database at all.
- Settling: with the call's ledger row (the recorder's transaction) the charge moves from the
  lease to the window's spend; the rest of the call's hold goes back to the lease.
- Upkeep gives back the room of leases that stayed idle for an interval, of leases for a budget
  whose limit changed, and at shutdown everything; it renews the expiry of leases in use.
- A process that dies leaves its leases to expire; ``BudgetStore.sweep`` releases them. A lease
  is used only while its expiry is far enough away for a call starting now to settle first.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.budgets import (
    EPSILON_USD,
    Budget,
    BudgetExceeded,
    Window,
    period_window,
    unreserve,
    window_row,
)
from service.ledger import insert_ignore, now
from service.tables import budget_reservations, budget_windows

log = logging.getLogger("switchboard")
LEASE_HOLDS = 32  # a lease grows by room for this many holds of the size asked for...
LEASE_SHARE = 0.05  # ...but by at most this share of the window's remaining room
SETTLE_MARGIN_S = 60.0  # time allowed after a call's timeout for its row to be written


def _low_water(lease: Lease, amount_usd: float) -> float:
    """Below this much free room a lease is refilled ahead of need."""
    return max(LEASE_HOLDS * amount_usd / 4, lease.pending_usd / 2)


@dataclass(eq=False)
class Lease:
    """Room this process reserved on one budget window (``granted_usd``, the amount of its row),
    of which its calls in flight hold ``pending_usd``."""

    id: str
    budget: Budget
    start: datetime
    granted_usd: float = 0.0
    pending_usd: float = 0.0
    expires_at: datetime | None = None  # None: not in the database yet
    used: bool = False  # a call held from it since the last upkeep
    full: bool = False  # a refill found no room: no more refills ahead of need

    @property
    def free_usd(self) -> float:
        return self.granted_usd - self.pending_usd


@dataclass
class Hold:
    """One upstream call's worst-case cost, held on the lease of every budget it counts
    against."""

    amount_usd: float
    leases: list[Lease] = field(default_factory=list)


@dataclass
class Settlement:
    """What one transaction charged: the holds settled, what each lease gave up to spend, and
    the windows as they now are."""

    holds: list[Hold]
    moved: dict[Lease, float] = field(default_factory=dict)
    lost: list[Lease] = field(default_factory=list)  # their rows were swept
    windows: list[Window] = field(default_factory=list)


@dataclass
class WindowCharge:
    """What one settlement adds to one window (any of its leases stands for the window)."""

    lease: Lease
    charge_usd: float = 0.0
    moved_usd: float = 0.0
    calls: int = 0


class LeaseLost(Exception):
    """A lease's row is gone (its process stalled past the expiry and it was swept)."""

    def __init__(self, lease: Lease):
        self.lease = lease


class BudgetLeases:
    """This process's leases, and the holds, settlements and releases of its calls."""

    def __init__(self, engine: AsyncEngine, request_timeout_s: float, upkeep_interval_s: float):
        self.engine = engine
        self.process = uuid.uuid4().hex[:12]
        self.ttl = timedelta(seconds=request_timeout_s + 2 * upkeep_interval_s + SETTLE_MARGIN_S)
        self.min_left = timedelta(seconds=request_timeout_s + SETTLE_MARGIN_S)
        self._active: dict[tuple[int, datetime], Lease] = {}
        self._retired: list[Lease] = []  # no new holds; room given back by upkeep
        self._serial = 0
        self._growing: asyncio.Future[None] | None = None  # the grow in flight
        self._refill: asyncio.Task[None] | None = None  # kept referenced while it runs

    # -- holds ---------------------------------------------------------------------------------

    async def hold(self, applicable: list[Budget], amount_usd: float) -> Hold:
        """Hold ``amount_usd`` on every budget, all or none; BudgetExceeded names the first
        budget without room."""
        while True:
            leases = self._leases_for(applicable)
            short = [lease for lease in leases if lease.free_usd < amount_usd - EPSILON_USD]
            if not short:
                break
            if self._growing is not None:  # one grow at a time; the others look again after it
                await asyncio.shield(self._growing)
                continue
            await self._grow(short, amount_usd, need_all=True)
        for lease in leases:  # no await since the room was checked: nothing can take it
            lease.pending_usd += amount_usd
            lease.used = True
        low = [
            lease
            for lease in leases
            if not lease.full and lease.free_usd < _low_water(lease, amount_usd)
        ]
        if low and self._growing is None:  # grow ahead of need, off this call's path
            self._refill = asyncio.create_task(self._grow(low, amount_usd, need_all=False))
        return Hold(amount_usd, leases)

    async def wait_for_growth(self) -> None:
        """Return once no lease is growing (a refill ahead of need may be)."""
        while self._growing is not None:
            await asyncio.shield(self._growing)

    def release(self, hold: Hold) -> None:
        """A failed call's hold goes back to its leases."""
        for lease in hold.leases:
            lease.pending_usd -= hold.amount_usd
        hold.leases = []

    async def settle(self, conn: AsyncConnection, charges: list[tuple[Hold, float]]) -> Settlement:
        """In the caller's transaction: move each call's charge from its leases to the windows'
        spend (the rest of its hold goes back to the lease). Rows are locked in one order: the
        leases, then the windows by budget id. Pass the result to ``settled`` once the
        transaction commits."""
        settlement = Settlement([hold for hold, _ in charges])
        charged: dict[tuple[int, datetime], WindowCharge] = {}
        for hold, charge_usd in charges:
            for lease in hold.leases:
                settlement.moved[lease] = settlement.moved.get(lease, 0.0) + min(
                    charge_usd, hold.amount_usd
                )
                window = charged.setdefault((lease.budget.id, lease.start), WindowCharge(lease))
                window.charge_usd += charge_usd
                window.calls += 1
        for lease in sorted(settlement.moved, key=lambda held: (held.budget.id, held.id)):
            moved = settlement.moved[lease]
            if not await _shrink(conn, lease, moved):
                # swept: its room is back in the window; the spend still counts
                settlement.moved[lease] = moved = 0.0
                settlement.lost.append(lease)
            charged[(lease.budget.id, lease.start)].moved_usd += moved
        for key in sorted(charged):
            window = charged[key]
            lease = window.lease
            row = (
                await conn.execute(
                    budget_windows.update()
                    .where(window_row(lease.budget.id, lease.start))
                    .values(
                        reserved_usd=budget_windows.c.reserved_usd - window.moved_usd,
                        spent_usd=budget_windows.c.spent_usd + window.charge_usd,
                        requests=budget_windows.c.requests + window.calls,
                    )
                    .returning(
                        budget_windows.c.spent_usd,
                        budget_windows.c.reserved_usd,
                        budget_windows.c.requests,
                    )
                )
            ).first()
            if row is not None:  # None: the budget was deleted meanwhile
                _, resets_at = period_window(lease.budget.period, lease.start)
                settlement.windows.append(Window(lease.budget, lease.start, resets_at, *row))
        return settlement

    def settled(self, settlement: Settlement) -> None:
        """After ``settle``'s transaction committed: the leases shrink by what was charged and
        get the rest of each hold back; swept ones are not used again."""
        for lease, moved in settlement.moved.items():
            lease.granted_usd -= moved
        for lease in settlement.lost:
            self._lose(lease)
        for hold in settlement.holds:
            for lease in hold.leases:
                lease.pending_usd -= hold.amount_usd
            hold.leases = []

    # -- leases --------------------------------------------------------------------------------

    def _leases_for(self, applicable: list[Budget]) -> list[Lease]:
        """The lease of each budget's current window (new and empty if there is none or the one
        there can no longer be used), in budget id order: one lock order across processes."""
        at = now()
        found = []
        for budget in sorted(applicable, key=lambda b: b.id):
            start, _ = period_window(budget.period, at)
            lease = self._active.get((budget.id, start))
            if lease is not None and not self._usable(lease, budget, at):
                self._retire(lease)
                lease = None
            if lease is None:
                self._serial += 1
                lease_id = f"lease:{self.process}:{self._serial}:{budget.id}"
                lease = self._active[(budget.id, start)] = Lease(lease_id, budget, start)
            found.append(lease)
        return found

    def _usable(self, lease: Lease, budget: Budget, at: datetime) -> bool:
        if lease.budget.limit_usd != budget.limit_usd:
            return False  # granted under another limit: a lower one must take effect
        return lease.expires_at is None or lease.expires_at - at >= self.min_left

    def _retire(self, lease: Lease) -> None:
        if self._active.get((lease.budget.id, lease.start)) is lease:
            del self._active[(lease.budget.id, lease.start)]
            self._retired.append(lease)

    def _lose(self, lease: Lease) -> None:
        """The lease's row was swept: its room is gone (calls in flight settle as spend only)."""
        self._retire(lease)
        lease.granted_usd = 0.0

    def _grow(
        self, short: list[Lease], amount_usd: float, need_all: bool
    ) -> Coroutine[None, None, None]:
        """Reserve more room for each lease in one transaction. ``need_all``: each must get
        room for a hold of ``amount_usd`` (all or none; else BudgetExceeded); otherwise this is
        a refill ahead of need and takes what fits. A lease whose row was swept is given up
        instead (the caller looks again and finds a new one). The grow counts as in flight from
        this call on, before it is awaited or scheduled."""
        growing = self._growing = asyncio.get_running_loop().create_future()
        return self._grow_until_done(short, amount_usd, need_all, growing)

    async def _grow_until_done(
        self, short: list[Lease], amount_usd: float, need_all: bool, growing: asyncio.Future[None]
    ) -> None:
        try:
            await self._grow_once(short, amount_usd, need_all)
        except LeaseLost as lost:
            self._lose(lost.lease)
        except Exception:
            if need_all:
                raise
            log.debug("refilling a budget lease failed", exc_info=True)  # a call will retry
        finally:
            growing.set_result(None)
            self._growing = None

    async def _grow_once(self, short: list[Lease], amount_usd: float, need_all: bool) -> None:
        at = now()
        expires_at = at + self.ttl
        grants: list[float] = []
        async with self.engine.begin() as conn:
            for lease in short:  # the lease rows first (settle's lock order), and still there?
                if lease.expires_at is not None and not await _renew(conn, lease, expires_at):
                    raise LeaseLost(lease)  # the transaction rolls back
            for lease in short:
                await insert_ignore(
                    conn, budget_windows, budget_id=lease.budget.id, period_start=lease.start
                )
                need = amount_usd - lease.free_usd if need_all else 0.0
                grants.append(await self._reserve(conn, lease, need, amount_usd))
            for lease, grant in zip(short, grants, strict=True):
                if not grant:
                    continue
                if lease.expires_at is None:
                    await conn.execute(
                        budget_reservations.insert().values(
                            id=lease.id,
                            budget_id=lease.budget.id,
                            period_start=lease.start,
                            amount_usd=grant,
                            expires_at=expires_at,
                        )
                    )
                else:
                    await conn.execute(
                        budget_reservations.update()
                        .where(budget_reservations.c.id == lease.id)
                        .values(amount_usd=budget_reservations.c.amount_usd + grant)
                    )
        for lease, grant in zip(short, grants, strict=True):
            if grant:
                lease.granted_usd += grant
                lease.expires_at = expires_at
            elif not need_all:
                lease.full = True  # near the limit: calls grow it by what they need

    @staticmethod
    async def _reserve(
        conn: AsyncConnection, lease: Lease, need: float, amount_usd: float
    ) -> float:
        """Add room for ``LEASE_HOLDS`` holds of ``amount_usd`` (or, if more, for what the
        lease's calls in flight hold) to the window's reserved room, but at most ``LEASE_SHARE``
        of what remains and at least ``need``; BudgetExceeded if ``need`` does not fit."""
        budget = lease.budget
        this = window_row(budget.id, lease.start)
        row = (await conn.execute(budget_windows.select().where(this))).one()
        remaining = budget.limit_usd - row.spent_usd - row.reserved_usd
        want = min(max(LEASE_HOLDS * amount_usd, 2 * lease.pending_usd), LEASE_SHARE * remaining)
        if need <= 0 and want < amount_usd:
            return 0.0  # a refill that could not serve one more hold would only strand room
        for grant in dict.fromkeys(g for g in (max(need, want), need) if g > 0):
            taken = await conn.execute(
                budget_windows.update()
                .where(
                    this
                    & (
                        budget_windows.c.spent_usd + budget_windows.c.reserved_usd + grant
                        <= budget.limit_usd + EPSILON_USD
                    )
                )
                .values(reserved_usd=budget_windows.c.reserved_usd + grant)
            )
            if taken.rowcount == 1:
                return grant
        if need <= 0:
            return 0.0  # a refill that does not fit: calls grow by what they need
        row = (await conn.execute(budget_windows.select().where(this))).one()
        _, resets_at = period_window(budget.period, lease.start)
        full = Window(budget, lease.start, resets_at, row.spent_usd, row.reserved_usd)
        raise BudgetExceeded(full, amount_usd)

    # -- upkeep --------------------------------------------------------------------------------

    async def tidy(self, everything: bool = False) -> None:
        """Give back the free room of retired leases and of leases idle since the last upkeep
        (``everything``: of all leases, at shutdown), drop the rows of leases with nothing in
        flight, and renew the expiry of the rest."""
        await self.wait_for_growth()
        for lease in list(self._active.values()):
            if everything or not lease.used:
                self._retire(lease)
            lease.used = False
        retired = sorted(self._retired, key=lambda lease: (lease.budget.id, lease.id))
        active = sorted(self._active.values(), key=lambda lease: (lease.budget.id, lease.id))
        expires_at = now() + self.ttl
        given: dict[tuple[int, datetime], float] = {}
        shrinks: list[tuple[Lease, float]] = []
        renewals: list[Lease] = []
        dropped: list[Lease] = []  # their rows are gone: forget them
        async with self.engine.begin() as conn:
            for lease in retired:  # the lease rows first, then the windows (settle's order)
                if lease.expires_at is None:
                    dropped.append(lease)
                    continue
                if lease.pending_usd <= EPSILON_USD:
                    dropped.append(lease)
                    gone = await conn.execute(
                        budget_reservations.delete()
                        .where(budget_reservations.c.id == lease.id)
                        .returning(budget_reservations.c.amount_usd)
                    )
                    amount = gone.scalar() or 0.0
                else:
                    amount = max(0.0, lease.free_usd)
                    if not await _shrink(conn, lease, amount):
                        amount = 0.0
                key = (lease.budget.id, lease.start)
                given[key] = given.get(key, 0.0) + amount
                shrinks.append((lease, amount))
            for lease in active:
                if lease.expires_at is not None and await _renew(conn, lease, expires_at):
                    renewals.append(lease)
            await unreserve(conn, given)
        for lease, amount in shrinks:  # committed: the memory follows
            lease.granted_usd -= amount
        for lease in renewals:
            lease.expires_at = expires_at
        self._retired = [lease for lease in self._retired if lease not in dropped]


async def _shrink(conn: AsyncConnection, lease: Lease, amount: float) -> bool:
    """Take ``amount`` off the lease's row; False if the row is gone (swept)."""
    shrunk = await conn.execute(
        budget_reservations.update()
        .where(
            (budget_reservations.c.id == lease.id)
            & (budget_reservations.c.amount_usd >= amount - EPSILON_USD)
        )
        .values(amount_usd=budget_reservations.c.amount_usd - amount)
    )
    return shrunk.rowcount == 1


async def _renew(conn: AsyncConnection, lease: Lease, expires_at: datetime) -> bool:
    """Move the lease's expiry; False if its row is gone (swept)."""
    renewed = await conn.execute(
        budget_reservations.update()
        .where(budget_reservations.c.id == lease.id)
        .values(expires_at=expires_at)
    )
    return renewed.rowcount == 1
