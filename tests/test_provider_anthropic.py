"""The Anthropic adapter against a mocked Messages API: requests, answers, streams and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from service.providers import base
from service.providers.anthropic import AnthropicProvider, native_model

KEY = "sk-ant-test-key"
MODEL = "anthropic/claude-3.5-sonnet"

CONVERSATION: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "auto",
    "max_completion_tokens": 256,
    "temperature": 0.2,
    "stop": "END",
    "user": "user-42",
    "logprobs": False,  # unknown to Anthropic: ignored
}

EXPECTED_REQUEST = {
    "model": "claude-3-5-sonnet-latest",
    "max_tokens": 256,
    "system": "Be brief.\n\nUse tools.",
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "temperature": 0.2,
    "stop_sequences": ["END"],
    "tools": [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ],
    "tool_choice": {"type": "auto"},
    "metadata": {"user_id": "user-42"},
}

ANSWER = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-sonnet-20241022",
    "content": [
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "now."},
        {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
        "output_tokens": 7,
    },
}


class Pieces(httpx.AsyncByteStream):
    """A response body delivered in the given pieces, optionally failing afterwards."""

    def __init__(self, pieces: list[bytes], fail: Exception | None = None):
        self.pieces = pieces
        self.fail = fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.fail is not None:
            raise self.fail


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events
    )


def provider(handler: Callable[[httpx.Request], httpx.Response]) -> AnthropicProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AnthropicProvider(KEY, client, base_url="https://anthropic.test")


def complete(handler: Callable[[httpx.Request], httpx.Response], body: dict[str, Any]) -> Any:
    return asyncio.run(provider(handler).complete(MODEL, body))


def collect(handler: Callable[[httpx.Request], httpx.Response], body: dict[str, Any]) -> list:
    async def run() -> list[base.Chunk]:
        return [chunk async for chunk in provider(handler).stream(MODEL, body)]

    return asyncio.run(run())


def raises(call: Callable[[], Any]) -> base.UpstreamError:
    with pytest.raises(base.UpstreamError) as info:
        call()
    return info.value


@pytest.mark.parametrize(
    ("catalog_id", "native"),
    [
        ("anthropic/claude-3.5-sonnet", "claude-3-5-sonnet-latest"),
        ("anthropic/claude-3-haiku", "claude-3-haiku-20240307"),
        ("anthropic/claude-3-opus", "claude-3-opus-20240229"),
        ("anthropic/claude-haiku-4.5", "claude-haiku-4-5"),
        ("anthropic/claude-3.5-sonnet-20240620", "claude-3-5-sonnet-20240620"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
    ],
)
def test_native_model(catalog_id: str, native: str) -> None:
    assert native_model(catalog_id) == native


def test_serves_anthropic_ids_only() -> None:
    p = provider(lambda request: httpx.Response(500))
    assert p.name == "anthropic"
    assert p.serves("anthropic/claude-3-haiku")
    assert not p.serves("openai/gpt-4o") and not p.serves("google/gemini-2.5-pro")


def test_request_is_translated_exactly() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANSWER)

    complete(handler, CONVERSATION)
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "https://anthropic.test/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == EXPECTED_REQUEST


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"max_tokens": 4096}),
        ({"max_tokens": 99}, {"max_tokens": 99}),
        ({"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
        ({"top_p": 0.9}, {"top_p": 0.9}),
        ({"temperature": 1.7, "top_p": 0.9}, {"temperature": 1.0}),
        (
            {"tools": CONVERSATION["tools"], "tool_choice": "required"},
            {"tool_choice": {"type": "any"}},
        ),
        (
            {"tools": CONVERSATION["tools"], "tool_choice": "none"},
            {"tool_choice": {"type": "none"}},
        ),
        (
            {
                "tools": CONVERSATION["tools"],
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
            },
            {"tool_choice": {"type": "tool", "name": "weather"}},
        ),
        (
            {"tools": CONVERSATION["tools"], "parallel_tool_calls": False},
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        ),
        ({"response_format": {"type": "json_object"}}, {}),
    ],
)
def test_request_options(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=ANSWER)

    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    complete(handler, body)
    sent = seen[0]
    for key, value in expected.items():
        assert sent[key] == value
    if "top_p" not in expected:
        assert "top_p" not in sent
    assert "response_format" not in sent


def test_answer_is_translated() -> None:
    completion = complete(lambda request: httpx.Response(200, json=ANSWER), CONVERSATION)
    body = completion.body
    assert body["id"] == "msg_01"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Checking now."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_2" and call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 7,
        "total_tokens": 122,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    assert completion.usage == base.Usage(prompt_tokens=115, completion_tokens=7, cached_tokens=100)


def test_content_is_none_when_only_tool_calls() -> None:
    answer = {**ANSWER, "content": ANSWER["content"][2:]}
    body = complete(lambda request: httpx.Response(200, json=answer), CONVERSATION).body
    assert body["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_finish_reason_mapping(stop_reason: str, finish: str) -> None:
    answer = {**ANSWER, "stop_reason": stop_reason}
    body = complete(lambda request: httpx.Response(200, json=answer), CONVERSATION).body
    assert body["choices"][0]["finish_reason"] == finish


STREAM_EVENTS = [
    {
        "type": "message_start",
        "message": {
            **ANSWER,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": ""},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"ci'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": 'ty": "Oslo"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 30},
    },
    {"type": "message_stop"},
]


def split_awkwardly(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_stream_reassembles_text_and_tool_call() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, stream=Pieces(split_awkwardly(sse(*STREAM_EVENTS))))

    chunks = collect(handler, CONVERSATION)
    assert seen[0] == {**EXPECTED_REQUEST, "stream": True}
    payloads = [json.loads(chunk.data) for chunk in chunks]
    for payload in payloads:
        assert payload["id"] == "msg_01"
        assert payload["object"] == "chat.completion.chunk"
        assert payload["model"] == MODEL
        assert isinstance(payload["created"], int)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [p["choices"][0]["delta"] for p in payloads if p["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_9",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert all(call["index"] == 0 for call in calls)
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert payloads[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "total_tokens": 42,
    }
    assert chunks[-1].usage == base.Usage(prompt_tokens=12, completion_tokens=30)
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_parses_multiline_data_crlf_and_comments() -> None:
    start = json.dumps(STREAM_EVENTS[0], indent=1).replace("\n", "\r\ndata: ")
    body = (
        b": keep-alive comment\r\n"
        + f"event: message_start\r\ndata: {start}\r\n\r\n".encode()
        + sse(*STREAM_EVENTS[1:6]).replace(b"\n", b"\r\n")
        + sse(STREAM_EVENTS[-2], STREAM_EVENTS[-1])
    )
    chunks = collect(lambda request: httpx.Response(200, content=body), CONVERSATION)
    payloads = [json.loads(chunk.data) for chunk in chunks]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
    assert text == "Hello"
    assert payloads[-1]["usage"]["completion_tokens"] == 30


def test_stream_tool_call_without_argument_deltas_sends_empty_object() -> None:
    events = [STREAM_EVENTS[0], STREAM_EVENTS[6], STREAM_EVENTS[10], *STREAM_EVENTS[-2:]]
    chunks = collect(lambda request: httpx.Response(200, content=sse(*events)), CONVERSATION)
    calls = [
        call
        for p in map(json.loads, (c.data for c in chunks))
        for choice in p["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]
    assert "".join(call["function"]["arguments"] for call in calls) == "{}"


def test_stream_cut_before_message_stop_is_malformed() -> None:
    body = sse(*STREAM_EVENTS[:5])
    error = raises(lambda: collect(lambda request: httpx.Response(200, content=body), CONVERSATION))
    assert error.kind == base.MALFORMED


def test_stream_error_event_is_server_error() -> None:
    failure = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    body = sse(*STREAM_EVENTS[:4], failure)
    error = raises(lambda: collect(lambda request: httpx.Response(200, content=body), CONVERSATION))
    assert error.kind == base.SERVER_ERROR
    assert "Overloaded" in error.message


def test_stream_connection_dropped_midway_is_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        dropped = httpx.RemoteProtocolError("peer closed connection")
        return httpx.Response(200, stream=Pieces([sse(*STREAM_EVENTS[:4])], fail=dropped))

    assert raises(lambda: collect(handler, CONVERSATION)).kind == base.CONNECTION


def test_stream_read_timeout_midway_is_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        timeout = httpx.ReadTimeout("read timed out")
        return httpx.Response(200, stream=Pieces([sse(*STREAM_EVENTS[:4])], fail=timeout))

    assert raises(lambda: collect(handler, CONVERSATION)).kind == base.TIMEOUT


def test_stream_garbage_data_is_malformed() -> None:
    body = b"event: message_start\ndata: {not json\n\n"
    error = raises(lambda: collect(lambda request: httpx.Response(200, content=body), CONVERSATION))
    assert error.kind == base.MALFORMED


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [
        (429, base.RATE_LIMITED, "rate_limit_error"),
        (500, base.SERVER_ERROR, "api_error"),
        (529, base.SERVER_ERROR, "overloaded_error"),
        (401, base.AUTH, "authentication_error"),
        (403, base.AUTH, "permission_error"),
        (400, base.BAD_REQUEST, "invalid_request_error"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_error_statuses(status: int, kind: str, error_type: str, streamed: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"retry-after": "7"} if status == 429 else {}
        return httpx.Response(status, json=error_body(error_type, f"bad {KEY}"), headers=headers)

    call = (
        (lambda: collect(handler, CONVERSATION))
        if streamed
        else (lambda: complete(handler, CONVERSATION))
    )
    error = raises(call)
    assert (error.kind, error.status, error.provider) == (kind, status, "anthropic")
    assert error_type in error.message
    assert error.retry_after_s == (7.0 if status == 429 else None)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>gateway</html>"),
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={**ANSWER, "content": [{"type": "text"}]}),
    ],
)
def test_malformed_answer(response: httpx.Response) -> None:
    error = raises(lambda: complete(lambda request: response, CONVERSATION))
    assert error.kind == base.MALFORMED


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (httpx.ConnectTimeout("connect timed out"), base.TIMEOUT),
        (httpx.ReadTimeout("read timed out"), base.TIMEOUT),
        (httpx.ConnectError("connection refused"), base.CONNECTION),
        (httpx.RemoteProtocolError("reset"), base.CONNECTION),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_transport_failures(exception: Exception, kind: str, streamed: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    call = (
        (lambda: collect(handler, CONVERSATION))
        if streamed
        else (lambda: complete(handler, CONVERSATION))
    )
    assert raises(call).kind == kind


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}], "n": 2},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        {"messages": [{"role": "function", "content": "x"}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}],
                }
            ]
        },
        {"messages": "not a list"},
    ],
)
def test_untranslatable_requests_are_bad_requests_and_not_sent(body: dict[str, Any]) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=ANSWER)

    assert raises(lambda: complete(handler, body)).kind == base.BAD_REQUEST
    assert raises(lambda: collect(handler, body)).kind == base.BAD_REQUEST
    assert sent == []
