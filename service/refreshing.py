"""A value read from the database and shared by a process's requests, kept off their path.

Budgets, open breakers, the running experiment and API keys are read on every request but change
rarely. ``Refreshing`` keeps the last value read: younger than ``max_age_s`` it is returned as it
is; older, it is still returned (for up to another ``max_age_s``) while one read in the
background replaces it; only the first caller, a caller after ``invalidate``, or one finding
the value older than twice ``max_age_s`` waits, and then for the one read in flight that every
such caller shares. So a request never queues behind the ledger's writer for a value it could
have had, and concurrent requests never each read the same row (with ``max_age_s`` 0 every
caller waits for a read that started after the last invalidation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("switchboard")
T = TypeVar("T")


class Refreshing(Generic[T]):
    def __init__(self, load: Callable[[], Awaitable[T]], max_age_s: float):
        self.load = load
        self.max_age_s = max_age_s
        self._value: tuple[float, T] | None = None  # (read at, value)
        self._reading: asyncio.Future[T] | None = None
        self._generation = 0

    async def get(self) -> T:
        at = time.monotonic()
        if self._value is not None:
            age = at - self._value[0]
            if age < self.max_age_s:
                return self._value[1]
            reading = self._read()
            if age < 2 * self.max_age_s:
                return self._value[1]  # stale but young enough: the read replaces it
        else:
            reading = self._read()
        return await asyncio.shield(reading)

    def invalidate(self) -> None:
        """Forget the value (the next caller reads afresh, not joining an older read)."""
        self._generation += 1
        self._value = None
        self._reading = None

    @property
    def expired(self) -> bool:
        """Older than twice ``max_age_s``: a value no caller would be given without a read."""
        return self._value is None or time.monotonic() - self._value[0] >= 2 * self.max_age_s

    def _read(self) -> asyncio.Future[T]:
        """The read in flight, or a new one."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read_once(self._generation))
            self._reading.add_done_callback(_retrieve)
        return self._reading

    async def _read_once(self, generation: int) -> T:
        started = time.monotonic()
        try:
            value = await self.load()
        finally:
            if generation == self._generation:
                self._reading = None
        if generation == self._generation:
            self._value = (started, value)
        return value


def _retrieve(reading: asyncio.Future[Any]) -> None:
    """A failed background read is logged (callers that waited for it got the error)."""
    if not reading.cancelled() and reading.exception() is not None:
        log.warning("refreshing a cached value failed: %s", reading.exception())
