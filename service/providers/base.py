"""The provider interface every upstream adapter implements, and its error type.

Adapters speak their provider's wire format and hand back OpenAI shapes: a non-streamed call
returns a ``Completion`` whose ``body`` is an OpenAI ``chat.completion`` object; a streamed call
is an async iterator of ``Chunk``s whose ``data`` is the JSON of one OpenAI
``chat.completion.chunk`` (what follows ``data: `` in an SSE frame). Usage, when the upstream
reports it, rides on the chunk that carries it and on ``Completion.usage``.

Every failure is an ``UpstreamError`` with a ``kind`` the caller's retry and fallback logic
reads; nothing else escapes an adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# UpstreamError.kind values
RATE_LIMITED = "rate_limited"  # 429
SERVER_ERROR = "server_error"  # 5xx
TIMEOUT = "timeout"  # connect/read/total timeout
CONNECTION = "connection"  # refused, reset, DNS
MALFORMED = "malformed"  # the upstream answered something that is not its wire format
BAD_REQUEST = "bad_request"  # 400/404/413/422: the request itself is wrong for this upstream
AUTH = "auth"  # 401/403 from the upstream: our provider key is wrong
RETRYABLE = frozenset({RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION, MALFORMED})


class UpstreamError(Exception):
    """A failed upstream call. ``retry_after_s`` comes from the upstream's Retry-After."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        provider: str = "",
    ):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.provider = provider

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


@dataclass
class Usage:
    """Token counts as the upstream reported them, and its own cost figure if it gave one."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_cost_usd: float | None = None
    cached_tokens: int = 0


@dataclass
class Completion:
    """A non-streamed answer in OpenAI ``chat.completion`` shape."""

    body: dict[str, Any]
    usage: Usage | None = None


@dataclass
class Chunk:
    """One streamed OpenAI ``chat.completion.chunk``, as JSON bytes; ``usage`` if it carries it."""

    data: bytes
    usage: Usage | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] | None = None  # ``data`` parsed, where the adapter parsed it


class Provider(Protocol):
    """An upstream that serves some catalog models."""

    name: str

    def serves(self, model: str) -> bool:
        """Whether this provider can serve ``model`` (a catalog id such as ``openai/gpt-4o``)."""
        ...

    async def complete(self, model: str, body: dict[str, Any]) -> Completion:
        """One non-streamed call. ``body`` is the caller's OpenAI request (model replaced)."""
        ...

    def stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        """One streamed call: OpenAI chunks in order; raises UpstreamError on failure."""
        ...


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_for_status(
    status: int, message: str, retry_after: str | None, provider: str
) -> UpstreamError:
    """The UpstreamError for an HTTP error status from any provider."""
    if status == 429:
        kind = RATE_LIMITED
    elif status >= 500:
        kind = SERVER_ERROR
    elif status in (401, 403):
        kind = AUTH
    elif status == 408:
        kind = TIMEOUT
    else:
        kind = BAD_REQUEST
    return UpstreamError(kind, message, status, retry_after_seconds(retry_after), provider)


def transport_failure(exc: Exception, provider: str) -> UpstreamError:
    """The UpstreamError for an exception raised while calling a provider."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        kind = TIMEOUT
    elif isinstance(exc, httpx.TransportError):
        kind = CONNECTION
    else:
        kind = MALFORMED
    return UpstreamError(kind, f"{type(exc).__name__}: {exc}", provider=provider)


async def sse_events(response: Any) -> AsyncIterator[tuple[str, str]]:
    """(event, data) per server-sent event of an httpx response; multi-line data joined."""
    event, data = "", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)
