"""What keeps upstream failures from becoming client failures: backoff, circuit breakers, and
per-provider concurrency limits with a bounded queue."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
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


EVERYONE = "*"  # the circuit every tenant shares


class CircuitBreaker:
    """Per-model breaker over the requests of a recent window, not over attempts.

    Each request counts once per model, with its outcome there after its retries (a success, or
    a failure the upstream caused: 5xx, timeouts, resets, malformed answers). A model's circuit
    opens when, within ``window_s``, at least ``failures`` requests failed on it and they were
    at least ``failure_ratio`` of its requests, and they came from two tenants or more: one
    tenant's requests alone open a circuit for that tenant only. After ``cooldown_s`` one trial
    request goes through (half open): its success closes the circuit, its failure opens it
    again, and any other end (a budget refused it, the upstream refused the request itself)
    releases the trial for the next request.
    """

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        window_s: float = 60.0,
        failure_ratio: float = 0.5,
    ):
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.window_s = window_s
        self.failure_ratio = failure_ratio
        self._outcomes: dict[str, deque[tuple[float, object, bool]]] = {}
        self._opened_at: dict[tuple[str, object], float] = {}  # (model, tenant or EVERYONE)
        self._trial: dict[tuple[str, object], object] = {}  # circuit -> the trial's request

    def _circuits(self, model: str, tenant: object) -> list[tuple[str, object]]:
        return [(model, EVERYONE), (model, tenant)]

    def allows(self, model: str, tenant: object = None, request: object = None) -> bool:
        """Whether this request may call ``model`` (becoming the trial of a cooled circuit)."""
        for circuit in self._circuits(model, tenant):
            opened = self._opened_at.get(circuit)
            if opened is None:
                continue
            if time.monotonic() - opened < self.cooldown_s:
                return False
            trial = self._trial.get(circuit)
            if trial is not None and trial != request:
                return False  # one trial at a time
            self._trial[circuit] = request
        return True

    def is_open(self, model: str, tenant: object = None) -> bool:
        now = time.monotonic()
        return any(
            (opened := self._opened_at.get(circuit)) is not None and now - opened < self.cooldown_s
            for circuit in self._circuits(model, tenant)
        )

    def success(self, model: str, tenant: object = None, request: object = None) -> None:
        self._record(model, tenant, False)
        for circuit in self._circuits(model, tenant):
            self._opened_at.pop(circuit, None)
            self._trial.pop(circuit, None)

    def failure(self, model: str, tenant: object = None, request: object = None) -> None:
        """``request`` failed on ``model`` (call once per request, after its retries)."""
        now = time.monotonic()
        for circuit in self._circuits(model, tenant):
            if self._trial.get(circuit) == request and circuit in self._opened_at:
                self._opened_at[circuit] = now  # the trial failed: open again
                self._trial.pop(circuit, None)
        window = self._record(model, tenant, True)
        failed = [(t, who) for t, who, bad in window if bad]
        if len(failed) < self.failures or len(failed) < self.failure_ratio * len(window):
            return
        tenants = {who for _, who in failed}
        if len(tenants) >= 2:
            self._opened_at.setdefault((model, EVERYONE), now)
        else:
            mine = [t for t, who in failed if who == tenant]
            if len(mine) >= self.failures:
                self._opened_at.setdefault((model, tenant), now)

    def release(self, model: str, tenant: object = None, request: object = None) -> None:
        """The request ended on ``model`` neither for nor against it: free its trial."""
        for circuit in self._circuits(model, tenant):
            if self._trial.get(circuit) == request:
                self._trial.pop(circuit, None)

    def _record(self, model: str, tenant: object, failed: bool) -> deque:
        now = time.monotonic()
        window = self._outcomes.setdefault(model, deque())
        window.append((now, tenant, failed))
        while window and now - window[0][0] > self.window_s:
            window.popleft()
        return window

    def open_models(self, tenant: object = None) -> list[str]:
        """Models whose circuit is open for everyone, or for ``tenant``."""
        models = {model for model, _ in self._opened_at}
        return [m for m in models if self.is_open(m, tenant)]


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
