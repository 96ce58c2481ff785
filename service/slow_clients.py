"""Deadlines for clients that send a request slowly (or not at all), which uvicorn lacks.

- Headers: ``HeaderDeadlineProtocol``, uvicorn's httptools protocol with one more timer: a
  connection must deliver a request's headers within ``SWITCHBOARD_CLIENT_HEADER_TIMEOUT_S`` of
  opening (or of the request's first byte, on a kept-alive connection); otherwise it is
  answered 408 and closed. ``switchboard serve`` uses it; with uvicorn directly, pass
  ``--http service.slow_clients:HeaderDeadlineProtocol`` (or ``http=`` in its Config).
- Bodies: ``BodyDeadline``, an ASGI middleware: the whole body must arrive within
  ``SWITCHBOARD_CLIENT_BODY_TIMEOUT_S`` of the headers, else 408 ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import RequestTimeout

_TIMEOUT_BODY = (
    b'{"error": {"message": "the request headers did not arrive in time", "type": '
    b'"invalid_request_error", "param": null, "code": "request_timeout"}}'
)
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode()
    + _TIMEOUT_BODY
)


def header_timeout_s() -> float:
    """The header deadline (the protocol is built by uvicorn, which passes no settings)."""
    from service.config import Settings

    return Settings().client_header_timeout_s


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing connections whose request headers are too slow."""

    deadline_s: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if HeaderDeadlineProtocol.deadline_s is None:
            HeaderDeadlineProtocol.deadline_s = header_timeout_s()
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        assert self.deadline_s is not None
        self._header_timer = self.loop.call_later(self.deadline_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request must not stay open

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle between requests: uvicorn's keep-alive timeout applies

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class BodyDeadline:
    """408 for a request body that does not arrive within ``timeout_s`` of its headers."""

    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        complete = False

        async def timed() -> Message:
            nonlocal complete
            if complete:  # later reads wait for a disconnect, as long as the response takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s",
                    code="request_timeout",
                    headers={"connection": "close"},  # what is left of the body is unread
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed, send)
