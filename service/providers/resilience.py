"""What keeps upstream failures from becoming client failures: backoff, circuit breakers, and
per-provider concurrency limits with a bounded queue."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import RateLimited


def backoff_delay(
    attempt: int,
    retry_after_s: float | None,
    base_s: float,
    max_s: float,
    max_retry_after_s: float,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1-based), or None: do not retry here.

    An upstream Retry-After is honoured when it is at most ``max_retry_after_s`` (longer waits
    fall back to another model instead); otherwise exponential backoff with full jitter.
    """
    if retry_after_s is not None:
        return retry_after_s if retry_after_s <= max_retry_after_s else None
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


class CircuitBreaker:
    """Per-model breaker: opens after ``failures`` consecutive failures, lets one trial call
    through after ``cooldown_s``, closes again on a success."""

    def __init__(self, failures: int, cooldown_s: float):
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._consecutive: dict[str, int] = {}
        self._opened_at: dict[str, float] = {}

    def allows(self, model: str) -> bool:
        opened = self._opened_at.get(model)
        if opened is None:
            return True
        if time.monotonic() - opened >= self.cooldown_s:
            self._opened_at[model] = time.monotonic()  # half-open: one trial per cooldown
            return True
        return False

    def is_open(self, model: str) -> bool:
        opened = self._opened_at.get(model)
        return opened is not None and time.monotonic() - opened < self.cooldown_s

    def success(self, model: str) -> None:
        self._consecutive.pop(model, None)
        self._opened_at.pop(model, None)

    def failure(self, model: str) -> None:
        count = self._consecutive.get(model, 0) + 1
        self._consecutive[model] = count
        if count >= self.failures:
            self._opened_at[model] = time.monotonic()

    def open_models(self) -> list[str]:
        return [m for m in self._opened_at if self.is_open(m)]


class ConcurrencyLimit:
    """At most ``limit`` calls in flight to one provider; at most ``queue`` more waiting. A caller
    that finds the queue full is refused at once with 429 and Retry-After."""

    def __init__(self, limit: int, queue: int):
        self.limit = limit
        self.queue = queue
        self._semaphore = asyncio.Semaphore(limit)
        self._waiting = 0

    @property
    def in_flight(self) -> int:
        return self.limit - self._semaphore._value

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._semaphore.locked():
            if self._waiting >= self.queue:
                raise RateLimited(
                    "too many requests in flight to the upstream; retry shortly",
                    code="queue_full",
                    retry_after_s=1,
                )
            self._waiting += 1
            try:
                await self._semaphore.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._semaphore.acquire()
        try:
            yield
        finally:
            self._semaphore.release()


class KeyRateLimit:
    """A token bucket per API key: ``per_minute`` requests a minute, bursts up to that many.
    Per process: with N replicas behind a balancer a key gets up to N times the rate."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.buckets: dict[object, tuple[float, float]] = {}

    def wait_s(self, key: object) -> float:
        """0 if the key may make a request now (and take its token), else seconds to wait."""
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class CallerConcurrency:
    """Requests in flight per tenant (and per API key, when a limit is set), in this process:
    one caller's slow requests cannot take every upstream slot from the others. A request over
    a limit is refused at once (429 with Retry-After), not queued."""

    def __init__(self, per_tenant: int | None, per_key: int | None):
        self.limits = {"tenant": per_tenant, "key": per_key}
        self.in_flight: dict[tuple[str, object], int] = {}

    def _keys(self, tenant: object, key: object) -> list[tuple[str, object]]:
        keys = [("tenant", tenant)] if self.limits["tenant"] else []
        if self.limits["key"] and key is not None:
            keys.append(("key", key))
        return keys

    def acquire(self, tenant: object, key: object) -> str | None:
        """Take a slot for the caller: None, or which limit ("tenant", "key") is full."""
        keys = self._keys(tenant, key)
        for kind, value in keys:
            if self.in_flight.get((kind, value), 0) >= (self.limits[kind] or 0):
                return kind
        for slot in keys:
            self.in_flight[slot] = self.in_flight.get(slot, 0) + 1
        return None

    def release(self, tenant: object, key: object) -> None:
        for slot in self._keys(tenant, key):
            left = self.in_flight.get(slot, 1) - 1
            if left > 0:
                self.in_flight[slot] = left
            else:
                self.in_flight.pop(slot, None)
