"""Server-sent events: relay an upstream stream to the client and record it when it ends.

The first upstream chunk is awaited before any byte goes out, so a model that fails at once
can still be replaced by the next in the plan. After that, chunks are passed through as the
JSON they arrived as but for their ``id``, which is the switchboard request id (as in a
non-streamed answer), whatever the upstream called it. The upstream's usage chunk is held
back: with ``include_usage`` the client gets it as the last chunk, with ``cost`` and the
routing metadata, before ``[DONE]``. A failure
after the first byte ends the stream with an SSE error event and no ``[DONE]``, so the client can
tell the answer was cut.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from service.catalog import Catalog
from service.providers.base import Chunk, UpstreamError, Usage
from service.record import RequestRecord

SSE_DONE = b"data: [DONE]\n\n"


def frame(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def with_request_id(chunk: Chunk, request_id: str) -> bytes:
    """The chunk's JSON with ``id`` the switchboard request id (as non-streamed answers have):
    the id a client sends to /v1/feedback, whichever upstream streamed it."""
    payload = chunk.payload if chunk.payload is not None else json.loads(chunk.data)
    if payload.get("id") == request_id:
        return chunk.data
    return json.dumps({**payload, "id": request_id}, separators=(",", ":")).encode()


def streamed_text(chunks: list[bytes]) -> str:
    """The content deltas of relayed chunks (to estimate tokens when no usage came)."""
    parts = []
    for data in chunks:
        try:
            for choice in json.loads(data).get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    parts.append(content)
        except (ValueError, AttributeError):
            continue
    return "".join(parts)


def _usage_json(record: RequestRecord) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": record.prompt_tokens or 0,
        "completion_tokens": record.completion_tokens or 0,
        "total_tokens": (record.prompt_tokens or 0) + (record.completion_tokens or 0),
    }
    if record.cost_usd is not None:
        usage["cost"] = record.cost_usd
    return usage


async def relay(
    first: Chunk,
    upstream: AsyncIterator[Chunk],
    resources: AsyncExitStack,
    record: RequestRecord,
    catalog: Catalog,
    prompt: str,
    include_usage: bool,
    finish: Callable[[RequestRecord], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The client's SSE byte stream; ``finish`` records the request however the stream ends."""
    usage: Usage | None = None
    held: dict[str, Any] | None = None
    relayed: list[bytes] = []
    waiting_started = time.perf_counter()
    try:
        chunk: Chunk | None = first
        while chunk is not None:
            if chunk.usage is not None:
                usage = chunk.usage
                held = json.loads(chunk.data)
                if held.get("choices"):  # usage riding on a content chunk: relay the content
                    content = {k: v for k, v in held.items() if k != "usage"}
                    data = json.dumps({**content, "id": record.id}).encode()
                    relayed.append(data)
                    yield frame(data)
            else:
                data = with_request_id(chunk, record.id)
                relayed.append(data)
                yield frame(data)
            waiting_started = time.perf_counter()
            chunk = await anext(upstream, None)
            record.upstream_ms += (time.perf_counter() - waiting_started) * 1000
        record.price(catalog, usage, prompt, "" if usage else streamed_text(relayed))
        if include_usage:
            final = dict(held or {})
            final.update(
                {
                    "id": record.id,
                    "object": "chat.completion.chunk",
                    "created": final.get("created", int(time.time())),
                    "model": final.get("model", record.served_model),
                    "choices": [],
                    "usage": _usage_json(record),
                    "switchboard": record.metadata(),
                }
            )
            yield frame(json.dumps(final).encode())
        yield SSE_DONE
        record.status, record.http_status = "ok", 200
    except UpstreamError as error:
        record.upstream_ms += (time.perf_counter() - waiting_started) * 1000
        record.price(catalog, usage, prompt, "" if usage else streamed_text(relayed))
        record.fail(200, "stream_interrupted", error.message)
        body = {
            "error": {
                "message": f"the upstream stream failed after it started: {error.message}",
                "type": "upstream_error",
                "param": None,
                "code": "stream_interrupted",
            }
        }
        yield frame(json.dumps(body).encode())
    except BaseException:
        # the client went away (cancellation) or something unexpected: keep the truth
        record.price(catalog, usage, prompt, "" if usage else streamed_text(relayed))
        record.fail(499, "client_disconnected", "the client closed the stream")
        raise
    finally:
        await resources.aclose()
        await finish(record)
