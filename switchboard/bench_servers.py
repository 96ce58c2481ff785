"""Two tiny ASGI apps for the gateway benchmark (``switchboard bench``), served by uvicorn:

- ``mock``: an OpenAI-compatible upstream answering at once; ``{"stream": true}`` bodies get
  ``MOCK_CHUNKS`` (default 20) content chunks, a usage chunk and ``[DONE]``;
- ``passthrough``: the least a Python gateway can do, the floor to compare gateways with:
  FastAPI-free, one ``httpx.AsyncClient``, the body forwarded to ``PASSTHROUGH_UPSTREAM`` and the
  answer returned (streamed through when the request streams).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
HEAD = {"id": "chatcmpl-bench", "created": 1_700_000_000, "model": "mock-gpt"}
ANSWER = json.dumps(
    {
        **HEAD,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None) -> bytes:
    body: dict[str, Any] = {
        **HEAD,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def mock(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await _body(receive)
    if b'"stream": true' not in body and b'"stream":true' not in body:
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})
        return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    chunks = [_chunk({"role": "assistant", "content": ""})]
    chunks += [
        _chunk({"content": f"tok{i} "}) for i in range(int(os.environ.get("MOCK_CHUNKS", "20")))
    ]
    chunks += [_chunk({}, "stop", USAGE), b"data: [DONE]\n\n"]
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


_client: httpx.AsyncClient | None = None


async def passthrough(scope: dict, receive: Any, send: Any) -> None:
    global _client
    if scope["type"] != "http":
        return
    if _client is None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        _client = httpx.AsyncClient(base_url=os.environ["PASSTHROUGH_UPSTREAM"], limits=limits)
    body = await _body(receive)
    request = _client.build_request(
        "POST", "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    upstream = await _client.send(request, stream=True)
    headers = [(b"content-type", upstream.headers.get("content-type", "").encode())]
    await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
    async for piece in upstream.aiter_raw():
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await upstream.aclose()
    await send({"type": "http.response.body", "body": b""})
