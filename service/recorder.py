"""Writing each request's ledger row once it ends, with its budget settlement and alerts.

Rows are not written on the response path: a request hands its finished record to the queue and
answers; one writer task per process inserts whatever has queued as one batch, in one
transaction that also settles the batch's budget holds, so under load the ledger costs one
commit per batch instead of one per request. A failed batch is retried row by row. A row the
database refuses for what it holds (a NUL in a text, a string longer than its column) is
written at once without the offending fields, named in its ``dropped_fields`` (all its free
text if the offender cannot be found), so one bad row never holds up the rows after it. Rows
that fail because the database is away are retried with backoff for as long as it is. Reads
that must see a caller's own requests (``/v1/requests``, feedback, analytics) ``flush`` first;
shutdown drains the queue before the process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from service.budgets import Window
from service.journal import Journal
from service.ledger import Ledger
from service.metrics import Metrics
from service.record import RequestRecord
from service.spend_control import SpendControl
from service.tables import requests

log = logging.getLogger("switchboard")
MAX_BATCH = 500
DRAIN_TIMEOUT_S = 20.0
RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0, 5.0)


def database_away(error: BaseException) -> bool:
    """Whether a failed write may succeed unchanged later (connection lost, locked, read-only)
    rather than being refused for what the row holds."""
    if isinstance(error, (OperationalError, InterfaceError, OSError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _kind(error: BaseException) -> str:
    """The error's type, not its text: a refused statement's text quotes the row's content."""
    return type(getattr(error, "orig", None) or error).__name__


def _unstorable(value: Any, column: sa.Column[Any]) -> bool:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    length = getattr(column.type, "length", None)
    return "\x00" in value or (length is not None and len(value) > length)


def storable_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row without the fields the database cannot store, named in ``dropped_fields``; when
    none can be found, without every nullable text field."""
    nullable = [c for c in requests.columns if c.nullable and c.name != "dropped_fields"]
    dropped = [c.name for c in nullable if _unstorable(row.get(c.name), c)]
    if not dropped:
        texts = (sa.String, sa.Text, sa.JSON)
        dropped = [c.name for c in nullable if isinstance(c.type, texts) and row.get(c.name)]
    kept = {**row, **dict.fromkeys(dropped), "dropped_fields": ",".join(dropped)[:300]}
    return kept


class Recorder:
    def __init__(
        self, ledger: Ledger, metrics: Metrics, spend: SpendControl, journal: Journal | None = None
    ):
        self.journal = journal
        self.ledger = ledger
        self.metrics = metrics
        self.spend = spend
        self.queue: asyncio.Queue[RequestRecord] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None
        self.stopping: float | None = None  # when shutdown began

    async def finish(self, record: RequestRecord) -> None:
        """Queue a finished request's row (never blocks on the database)."""
        record.end()
        if record.hold is not None:
            record.charged_usd = self.spend.charge(record)
        if self.journal is not None:  # before the answer goes out: a crash loses no row
            charges = [
                {
                    "budget_id": lease.budget.id,
                    "period_start": lease.start,
                    "usd": record.charged_usd,
                }
                for lease in (record.hold.leases if record.hold else [])
            ]
            self.journal.answered(record.row(), charges)
        self.metrics.observe(record)
        self.queue.put_nowait(record)
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write_forever())

    async def flush(self) -> None:
        """Return once every row queued so far is in the database."""
        await self.queue.join()

    async def drain(self) -> None:
        """At shutdown: write everything queued, then stop the writer."""
        self.stopping = time.monotonic()
        await self.flush()
        if self.writer is not None:
            self.writer.cancel()

    async def _write_forever(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self.queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:  # the writer must outlive any one batch
                log.exception("recording a batch of %d requests failed", len(batch))
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _write(self, batch: list[RequestRecord]) -> None:
        """Write the batch; rows that fail are retried with backoff for as long as the process
        runs (a database away for a while loses nothing), and at most ``DRAIN_TIMEOUT_S`` once
        it is shutting down."""
        windows: list[Window] = []
        attempt = 0
        while batch:
            try:
                windows += await self._insert(batch)
                break
            except Exception:  # one bad row, or the database is away: write one by one
                failed, error = [], None
                for record in batch:
                    try:
                        windows += await self._insert_one(record)
                    except Exception as exc:
                        if not database_away(exc):  # refused even without its free text
                            log.error("gave up recording request %s (%s)", record.id, _kind(exc))
                            continue
                        failed.append(record)
                        error = exc
                batch = failed
            if not batch:
                break
            if self.stopping is not None and time.monotonic() > self.stopping + DRAIN_TIMEOUT_S:
                log.error("gave up recording requests %s", [r.id for r in batch])
                break
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            log.warning(
                "could not record %d request(s) (%s); retrying in %.2f s",
                len(batch),
                getattr(error, "orig", error),
                delay,
            )
            attempt += 1
            await asyncio.sleep(delay)
        if windows:
            try:
                await self.spend.alerts.budget_windows(windows)
            except Exception:
                log.exception("budget alerts for a batch of %d requests failed", len(windows))

    async def _insert_one(self, record: RequestRecord) -> list[Window]:
        """One row; refused for what it holds, it is written without the offending fields."""
        try:
            return await self._insert([record])
        except Exception as error:
            if database_away(error):
                raise
            row = storable_row(record.row())
            log.error(
                "request %s: the ledger refused its row (%s); recorded without %s",
                record.id,
                _kind(error),
                row["dropped_fields"],
            )
            return await self._insert([record], [row])

    async def _insert(
        self, batch: list[RequestRecord], rows: list[dict[str, Any]] | None = None
    ) -> list[Window]:
        rows = rows if rows is not None else [record.row() for record in batch]
        async with self.ledger.engine.begin() as conn:
            await conn.execute(requests.insert(), rows)
            settlement = await self.spend.settle(conn, batch)
        self.spend.settled(settlement)
        if self.journal is not None:
            self.journal.written([row["id"] for row in rows])
        return settlement.windows
