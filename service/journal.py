"""A local append-only journal, so that a killed process loses no ledger row.

Rows reach the ledger off the response path, in the recorder's batches; a process killed before
a batch commits would lose the rows of answers its clients already have, and of upstream calls
it made (and the upstream billed). So every upstream call is journaled before it is made, and
every answer before it goes out: one JSON line each, appended to this process's file in
``SWITCHBOARD_JOURNAL_DIR``. Appends are plain writes with no fsync: the kernel keeps them when
the process dies (the scope is a killed process, not a lost machine).

At start, each process replays the journals of dead processes (those whose lock it can take):
every journaled request without a ledger row gets one, in one transaction with its budget
charge. An answered request is recorded as it was answered, its charge added to the budget
windows it held on; a call that never answered is recorded ``error`` / ``process_died``, its
cost unknown (the upstream may have billed it: ``switchboard reconcile``). The dead process's
budget leases are released at once, instead of after their expiry.

Files rotate at ``ROTATE_BYTES``; a file whose requests are all in the ledger is deleted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.budgets import window_row
from service.tables import budget_windows, requests

log = logging.getLogger("switchboard")
ROTATE_BYTES = 16 * 1024 * 1024
DIED = "process_died"
DIED_MESSAGE = (
    "the process serving this request died before it answered; the upstream call may have "
    "been billed"
)


@dataclass
class _File:
    path: Path
    fd: int
    pending: set[str] = field(default_factory=set)  # request ids not yet in the ledger
    size: int = 0


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot journal {type(value).__name__}")


def database_id(database_url: str) -> str:
    """Which ledger a journal belongs to (a journal is replayed only into its own)."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


class Journal:
    """This process's journal files (``process``: its budget-lease owner id; ``database``:
    ``database_id`` of its ledger)."""

    def __init__(self, directory: Path, process: str, database: str):
        self.directory = Path(directory)
        self.process = process
        self.database = database
        self.files: list[_File] = []
        self._file_of: dict[str, _File] = {}
        self._serial = 0

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._rotate()
        except OSError as error:
            raise RuntimeError(
                f"SWITCHBOARD_JOURNAL_DIR {self.directory} cannot be written ({error}): the "
                "service keeps its crash journal there, so that a killed process loses no row"
            ) from None

    def _rotate(self) -> None:
        self._serial += 1
        path = self.directory / f"journal-{self.process}-{self._serial}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process lives
        self.files.append(_File(path, fd))
        header = {"t": "process", "process": self.process, "database": self.database}
        self._append(header | {"pid": os.getpid()})

    def _append(self, entry: dict[str, Any], request_id: str | None = None) -> None:
        line = (json.dumps(entry, default=_encode, separators=(",", ":")) + "\n").encode()
        current = self.files[-1]
        os.write(current.fd, line)
        current.size += len(line)
        if request_id is not None:
            current.pending.add(request_id)
            self._file_of[request_id] = current
        if current.size > ROTATE_BYTES:
            self._rotate()

    def attempt(self, row: dict[str, Any], model: str) -> None:
        """Before an upstream call to ``model``: the request's row as it would stand if the
        process died now (an error, cost unknown)."""
        died = {"status": "error", "http_status": 500, "error_code": DIED}
        died |= {"error_message": DIED_MESSAGE, "served_model": model}
        self._append({"t": "attempt", "row": row | died}, row["id"])

    def answered(self, row: dict[str, Any], charges: list[dict[str, Any]]) -> None:
        """Before the answer goes out (or, streamed, when it ends): the request's final row
        and what it charges each budget window."""
        self._append({"t": "answered", "row": row, "charges": charges}, row["id"])

    def written(self, request_ids: list[str]) -> None:
        """These rows are in the ledger: files with nothing left pending are deleted."""
        for request_id in request_ids:
            file = self._file_of.pop(request_id, None)
            if file is not None:
                file.pending.discard(request_id)
        for file in self.files[:-1]:
            if not file.pending:
                self._drop(file)

    def _drop(self, file: _File) -> None:
        os.close(file.fd)
        file.path.unlink(missing_ok=True)
        self.files.remove(file)

    def close(self) -> None:
        """At a clean shutdown (every row written): nothing to replay."""
        for file in list(self.files):
            self._drop(file)


async def replay(directory: Path, engine: AsyncEngine, database: str) -> dict[str, int]:
    """Record what dead processes' journals of this ledger (``database``) hold and it lacks;
    release their leases."""
    from service.budgets import BudgetStore

    counts = {"files": 0, "answered": 0, "unanswered": 0, "processes": 0}
    directory = Path(directory)
    if not directory.is_dir():
        return counts
    dead: dict[str, list[Path]] = {}
    for path in sorted(directory.glob("journal-*.jsonl")):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process's
            os.close(fd)
            continue
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        os.close(fd)
        header: dict[str, Any] = next((e for e in entries if e.get("t") == "process"), {})
        if header.get("database") != database:
            continue  # another ledger's: its own service replays it
        process = str(header.get("process", ""))
        dead.setdefault(process, []).append(path)
        counts["files"] += 1
        recorded = await _record(engine, entries)
        counts["answered"] += recorded["answered"]
        counts["unanswered"] += recorded["unanswered"]
    store = BudgetStore(engine)
    for process, paths in dead.items():
        if process:
            await store.sweep(owner=f"lease:{process}:")
            counts["processes"] += 1
        for path in paths:
            path.unlink(missing_ok=True)
    if counts["answered"] or counts["unanswered"]:
        log.warning("replayed dead processes' journals: %s", counts)
    return counts


async def _record(engine: AsyncEngine, entries: list[dict[str, Any]]) -> dict[str, int]:
    latest: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("t") in ("attempt", "answered"):
            request_id = entry["row"]["id"]
            if entry["t"] == "answered" or latest.get(request_id, {}).get("t") != "answered":
                latest[request_id] = entry
    counts = {"answered": 0, "unanswered": 0}
    if not latest:
        return counts
    async with engine.begin() as conn:
        existing = set(
            (await conn.scalars(sa.select(requests.c.id).where(requests.c.id.in_(latest)))).all()
        )
        for request_id, entry in latest.items():
            if request_id in existing:
                continue
            row = dict(entry["row"])
            row["created_at"] = datetime.fromisoformat(row["created_at"])
            await conn.execute(requests.insert().values(**row))
            for charge in entry.get("charges", []):
                start = datetime.fromisoformat(charge["period_start"])
                await conn.execute(
                    budget_windows.update()
                    .where(window_row(charge["budget_id"], start))
                    .values(
                        spent_usd=budget_windows.c.spent_usd + charge["usd"],
                        requests=budget_windows.c.requests + 1,
                    )
                )
            counts["answered" if entry["t"] == "answered" else "unanswered"] += 1
    return counts
