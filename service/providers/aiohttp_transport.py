"""The upstream client's transport: httpx's interface (which the providers, alerts and tests
speak) over aiohttp's connection pool.

httpx's own pool looks at every pooled connection for each request (is it expired, is its
socket readable?), so its cost grows with concurrency: profiled at 64 concurrent requests
(py-spy, the recipe in DEVELOPERS.md) it took a quarter of the service's samples. aiohttp
hands out an idle connection without that scan. Errors come back as the httpx exceptions the
providers classify: timeouts as ``httpx.TimeoutException``, everything else on the wire as
``httpx.TransportError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
from yarl import URL

KEEPALIVE_S = 15.0  # how long an idle upstream connection is kept


@contextmanager
def httpx_errors(request: httpx.Request) -> Iterator[None]:
    """aiohttp's errors as the httpx exception of the same meaning."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as error:
        raise httpx.ConnectTimeout(str(error) or "connect timed out", request=request) from error
    except aiohttp.ServerTimeoutError as error:
        raise httpx.ReadTimeout(str(error) or "read timed out", request=request) from error
    except aiohttp.ClientConnectorError as error:
        raise httpx.ConnectError(str(error), request=request) from error
    except aiohttp.ServerDisconnectedError as error:
        raise httpx.RemoteProtocolError(str(error), request=request) from error
    except (aiohttp.ClientPayloadError, aiohttp.ClientOSError) as error:
        raise httpx.ReadError(str(error), request=request) from error
    except aiohttp.InvalidURL as error:
        raise httpx.UnsupportedProtocol(str(error), request=request) from error
    except aiohttp.ClientError as error:
        raise httpx.TransportError(f"{type(error).__name__}: {error}", request=request) from error


class ResponseBody(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self.response = response
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors(self.request):
            async for chunk in self.response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self.response.release()  # back to the pool if read to the end, else closed


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int):
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        """The session, made on first use (inside the running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, keepalive_timeout=KEEPALIVE_S
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes the body by its content-encoding
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        with httpx_errors(request):
            response = await self._session_now().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=ResponseBody(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
