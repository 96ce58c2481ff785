"""Writing each request's ledger row once it ends, with its budget settlement and alerts."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from service.ledger import Ledger
from service.metrics import Metrics
from service.record import RequestRecord
from service.spend_control import SpendControl

log = logging.getLogger("switchboard")


class Recorder:
    """Writes ledger rows and updates metrics. A write runs as its own task, so a request whose
    client went away (its handler cancelled) is still recorded and its budget hold settled."""

    def __init__(self, ledger: Ledger, metrics: Metrics, spend: SpendControl):
        self.ledger = ledger
        self.metrics = metrics
        self.spend = spend
        self.pending: set[asyncio.Task[None]] = set()

    async def _write(self, record: RequestRecord) -> None:
        settle = None
        if record.hold is not None:
            record.charged_usd = self.spend.charge(record)
            settle = partial(self.spend.settle, record=record)
        row = record.row()
        self.metrics.observe(record)
        try:
            windows = await self.ledger.record_request(row, settle)
        except Exception:  # a failing database must not turn an answer into a crash
            log.exception("could not record request %s", record.id)
            return
        if windows:
            await self.spend.alerts.budget_windows(windows)

    async def finish(self, record: RequestRecord) -> None:
        task = asyncio.create_task(self._write(record))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        await asyncio.shield(task)

    async def drain(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
