"""Writing each request's ledger row once it ends, with its budget settlement and alerts.

Rows are not written on the response path: a request hands its finished record to the queue and
answers; one writer task per process inserts whatever has queued as one batch, in one
transaction that also settles the batch's budget holds, so under load the ledger costs one
commit per batch instead of one per request. A failed batch is retried row by row (one bad row
cannot lose the others), then again with backoff, for as long as the database is down. Reads
that must see a caller's own requests (``/v1/requests``, feedback, analytics) ``flush`` first;
shutdown drains the queue before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from service.budgets import Window
from service.ledger import Ledger
from service.metrics import Metrics
from service.record import RequestRecord
from service.spend_control import SpendControl
from service.tables import requests

log = logging.getLogger("switchboard")
MAX_BATCH = 500
DRAIN_TIMEOUT_S = 20.0
RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0, 5.0)


class Recorder:
    def __init__(self, ledger: Ledger, metrics: Metrics, spend: SpendControl):
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
                        windows += await self._insert([record])
                    except Exception as exc:
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

    async def _insert(self, batch: list[RequestRecord]) -> list[Window]:
        rows: list[dict[str, Any]] = [record.row() for record in batch]
        async with self.ledger.engine.begin() as conn:
            await conn.execute(requests.insert(), rows)
            settlement = await self.spend.settle(conn, batch)
        self.spend.settled(settlement)
        return settlement.windows
