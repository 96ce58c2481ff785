"""The one path every upstream text takes before it reaches a caller, a log or the ledger.

An upstream may echo the provider key it was sent (an error body that quotes the
``Authorization`` header, a stream's ``error`` event, an exception's text). ``Redacting`` wraps
each configured provider, so that whatever its adapter hands back (a completion body, each
streamed chunk, every ``UpstreamError``, any other exception turned into one) has every
configured provider key replaced by ``[redacted]``. The adapters themselves do no redaction.

Streams are checked one SSE event at a time, after the event's lines are put back together:
a key that a network read splits in two is whole again by then.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from service.providers.base import MALFORMED, Chunk, Completion, Provider, UpstreamError

MASK = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter "keys" (test placeholders) would mask ordinary words


class Redactor:
    """Replaces every known secret in a text."""

    def __init__(self, secrets: Iterable[str]):
        unique = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
        self.secrets = sorted(unique, key=len, reverse=True)  # a longer key may contain a shorter
        self._encoded = [s.encode() for s in self.secrets]

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def data(self, data: bytes) -> bytes:
        for secret in self._encoded:
            if secret in data:
                data = data.replace(secret, MASK.encode())
        return data

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        encoded = json.dumps(body)
        cleaned = self.text(encoded)
        return body if cleaned is encoded else json.loads(cleaned)

    def error(self, error: UpstreamError) -> UpstreamError:
        error.message = self.text(error.message)
        error.args = (error.message,)
        return error


class Redacting:
    """A provider whose every answer and failure went through a ``Redactor``."""

    def __init__(self, inner: Provider, redactor: Redactor):
        self.inner = inner
        self.name = inner.name
        self.redactor = redactor

    def serves(self, model: str) -> bool:
        return self.inner.serves(model)

    def _failure(self, exc: Exception) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return self.redactor.error(exc)
        # an adapter bug must not carry upstream text to a log unredacted either
        message = self.redactor.text(f"{self.name}: {type(exc).__name__}: {exc}")
        return UpstreamError(MALFORMED, message, provider=self.name)

    async def complete(self, model: str, body: dict[str, Any]) -> Completion:
        try:
            completion = await self.inner.complete(model, body)
        except Exception as exc:
            raise self._failure(exc) from None
        completion.body = self.redactor.body(completion.body)
        return completion

    @property
    def forwards(self) -> bool:
        """Whether the wrapped provider takes other endpoints of its API (``forward``)."""
        return hasattr(self.inner, "forward")

    async def forward(self, path: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await self.inner.forward(path, model, body)  # type: ignore[attr-defined]
        except Exception as exc:
            raise self._failure(exc) from None
        return self.redactor.body(result)

    async def stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        upstream = self.inner.stream(model, body)
        try:
            async for chunk in upstream:
                chunk.data = self.redactor.data(chunk.data)
                yield chunk
        except Exception as exc:
            raise self._failure(exc) from None
        finally:
            await upstream.aclose()  # type: ignore[attr-defined]


def redacting(providers: list[Provider], secrets: Iterable[str]) -> list[Provider]:
    """Each provider wrapped in one redactor of all ``secrets`` (unwrapped when there are none)."""
    redactor = Redactor(secrets)
    if not redactor:
        return providers
    return [Redacting(provider, redactor) for provider in providers]
