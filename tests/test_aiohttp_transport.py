"""The upstream transport against a real local server: answers, streams and each failure arrive
as the httpx response or exception the providers classify."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from service.providers.aiohttp_transport import AiohttpTransport
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices

MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstreamServer(catalog_prices([MODEL])) as server:
        yield server


def fault(upstream, kind: str, **extra) -> None:
    rule = {"model": "*", "fault": kind, "times": 1, **extra}
    httpx.post(f"{upstream.control_url}/faults", json=rule).raise_for_status()


def chat(upstream, timeout: float = 5.0, stream: bool = False):
    async def call():
        transport = AiohttpTransport(max_connections=10)
        headers = {"Authorization": "Bearer upstream-key"}
        async with httpx.AsyncClient(
            transport=transport, timeout=timeout, headers=headers
        ) as client:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "a b c"}]}
            if not stream:
                response = await client.post(f"{upstream.url}/chat/completions", json=body)
                return response, response.json()
            body["stream"] = True
            request = client.build_request("POST", f"{upstream.url}/chat/completions", json=body)
            response = await client.send(request, stream=True)
            try:
                lines = [line async for line in response.aiter_lines() if line]
            finally:
                await response.aclose()
            return response, lines

    return asyncio.run(call())


def test_an_answer_and_a_stream_come_through(upstream):
    response, body = chat(upstream)
    assert response.status_code == 200 and body["choices"][0]["message"]["content"]
    assert response.headers["content-type"].startswith("application/json")
    response, lines = chat(upstream, stream=True)
    assert response.status_code == 200 and lines[-1] == "data: [DONE]" and len(lines) > 2


def test_error_statuses_are_responses_not_exceptions(upstream):
    fault(upstream, "429", retry_after=3)
    response, body = chat(upstream)
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert "error" in body


def test_failures_become_the_httpx_exceptions_of_the_same_meaning(upstream):
    fault(upstream, "timeout", latency_ms=3000)
    with pytest.raises(httpx.ReadTimeout):
        chat(upstream, timeout=0.3)
    fault(upstream, "reset")
    with pytest.raises(httpx.TransportError) as reset:
        chat(upstream)
    assert not isinstance(reset.value, httpx.TimeoutException)
    fault(upstream, "cut_stream")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        chat(upstream, stream=True)
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    async def refused():
        async with httpx.AsyncClient(transport=AiohttpTransport(max_connections=1)) as client:
            await client.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(refused())
