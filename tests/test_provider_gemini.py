"""The Gemini adapter against a mocked Gemini API: requests, answers, streams and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from service.providers import base
from service.providers.gemini import GeminiProvider, native_model

KEY = "AIza-test-key"
MODEL = "google/gemini-2.0-flash-001"
URL = "https://gemini.test/v1beta/models/gemini-2.0-flash-001"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "additionalProperties": False,
        },
    },
}

CONVERSATION: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    "extra_content": {"google": {"thought_signature": "sig-1"}},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "22C"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ],
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
    "max_tokens": 256,
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": ["END"],
    "response_format": {"type": "json_object"},
    "user": "user-42",  # no Gemini equivalent: ignored
}

EXPECTED_REQUEST = {
    "systemInstruction": {"parts": [{"text": "Be brief.\n\nUse tools."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {
                    "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "sig-1",
                },
                {"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "weather", "response": {"output": {"temp": 18}}}},
                {"functionResponse": {"name": "weather", "response": {"output": "22C"}}},
                {"text": "And tomorrow?"},
            ],
        },
    ],
    "generationConfig": {
        "maxOutputTokens": 256,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
    },
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "weather",
                    "description": "Current weather",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                }
            ]
        }
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
}

ANSWER = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "thinking about it", "thought": True},
                    {"text": "Checking "},
                    {"text": "now."},
                    {
                        "functionCall": {"name": "weather", "args": {"city": "Oslo"}},
                        "thoughtSignature": "sig-9",
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 120,
        "candidatesTokenCount": 7,
        "thoughtsTokenCount": 20,
        "cachedContentTokenCount": 100,
        "totalTokenCount": 147,
    },
    "modelVersion": "gemini-2.0-flash-001",
    "responseId": "resp-1",
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
    return b"".join(f"data: {json.dumps(event)}\r\n\r\n".encode() for event in events)


def provider(handler: Callable[[httpx.Request], httpx.Response]) -> GeminiProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return GeminiProvider(KEY, client, base_url="https://gemini.test/")


def complete(
    handler: Callable[[httpx.Request], httpx.Response], body: dict[str, Any], model: str = MODEL
) -> Any:
    return asyncio.run(provider(handler).complete(model, body))


def collect(handler: Callable[[httpx.Request], httpx.Response], body: dict[str, Any]) -> list:
    async def run() -> list[base.Chunk]:
        return [chunk async for chunk in provider(handler).stream(MODEL, body)]

    return asyncio.run(run())


def raises(call: Callable[[], Any]) -> base.UpstreamError:
    with pytest.raises(base.UpstreamError) as info:
        call()
    return info.value


def answering(answer: Any, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=answer)


def test_native_model_and_serves() -> None:
    assert native_model("google/gemini-2.0-flash-001") == "gemini-2.0-flash-001"
    assert native_model("google/gemini-2.5-pro") == "gemini-2.5-pro"
    p = provider(answering(ANSWER))
    assert p.name == "gemini"
    assert p.serves("google/gemini-2.5-flash")
    assert not p.serves("google/gemma-2-9b-it") and not p.serves("anthropic/claude-3-haiku")


def test_request_is_translated_exactly() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANSWER)

    complete(handler, CONVERSATION)
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{URL}:generateContent"
    assert request.headers["x-goog-api-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert KEY not in str(request.url)
    assert json.loads(request.content) == EXPECTED_REQUEST


def test_gemini_3_gets_a_placeholder_signature_for_unsigned_calls() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=ANSWER)

    messages = [dict(m) for m in CONVERSATION["messages"]]
    messages[3]["tool_calls"] = [
        {k: v for k, v in call.items() if k != "extra_content"}
        for call in messages[3]["tool_calls"]
    ]
    complete(handler, {**CONVERSATION, "messages": messages}, model="google/gemini-3-pro-preview")
    parts = seen[0]["contents"][1]["parts"]
    assert parts[1]["thoughtSignature"] == "skip_thought_signature_validator"
    assert "thoughtSignature" not in parts[2]


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ({"tool_choice": "none"}, "toolConfig", {"functionCallingConfig": {"mode": "NONE"}}),
        ({"tool_choice": "required"}, "toolConfig", {"functionCallingConfig": {"mode": "ANY"}}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
            "toolConfig",
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}},
        ),
        ({"max_completion_tokens": 9, "stop": "x"}, "generationConfig", None),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "object"}},
                }
            },
            "generationConfig",
            {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
        ),
    ],
)
def test_request_options(extra: dict[str, Any], key: str, expected: Any) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=ANSWER)

    complete(
        handler, {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL], **extra}
    )
    if expected is None:
        assert seen[0][key] == {"maxOutputTokens": 9, "stopSequences": ["x"]}
    else:
        assert seen[0][key] == expected
    assert "systemInstruction" not in seen[0]


def test_answer_is_translated() -> None:
    completion = complete(answering(ANSWER), CONVERSATION)
    body = completion.body
    assert body["id"] == "resp-1"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Checking now."
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert call["extra_content"] == {"google": {"thought_signature": "sig-9"}}
    assert body["usage"] == {
        "prompt_tokens": 120,
        "completion_tokens": 27,
        "total_tokens": 147,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    assert completion.usage == base.Usage(
        prompt_tokens=120, completion_tokens=27, cached_tokens=100
    )


def test_content_is_none_when_only_function_calls() -> None:
    candidate = {
        **ANSWER["candidates"][0],
        "content": {"parts": [ANSWER["candidates"][0]["content"]["parts"][3]]},
    }
    body = complete(answering({**ANSWER, "candidates": [candidate]}), CONVERSATION).body
    assert body["choices"][0]["message"]["content"] is None


def text_answer(finish: str) -> dict[str, Any]:
    candidate = {"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": finish}
    return {**ANSWER, "candidates": [candidate]}


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
    ],
)
def test_finish_reason_mapping(reason: str, finish: str) -> None:
    body = complete(answering(text_answer(reason)), CONVERSATION).body
    assert body["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_is_content_filter() -> None:
    answer = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}
    body = complete(answering(answer), CONVERSATION).body
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["usage"]["prompt_tokens"] == 5


def part_event(
    *parts: dict[str, Any], finish: str | None = None, usage: dict | None = None
) -> dict:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    event: dict[str, Any] = {"candidates": [candidate], "responseId": "resp-7"}
    if usage:
        event["usageMetadata"] = usage
    return event


STREAM_EVENTS = [
    part_event({"text": "Hel"}, usage={"promptTokenCount": 12, "candidatesTokenCount": 1}),
    part_event({"text": "hmm", "thought": True}),
    part_event({"text": "lo"}),
    part_event(
        {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "s"},
        {"functionCall": {"name": "time", "args": {}}},
    ),
    part_event(
        {"text": ""},
        finish="STOP",
        usage={"promptTokenCount": 12, "candidatesTokenCount": 25, "thoughtsTokenCount": 5},
    ),
]


def test_stream_reassembles_text_and_tool_calls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        data = sse(*STREAM_EVENTS)
        pieces = [data[i : i + 9] for i in range(0, len(data), 9)]
        return httpx.Response(200, stream=Pieces(pieces))

    chunks = collect(handler, CONVERSATION)
    assert str(seen[0].url) == f"{URL}:streamGenerateContent?alt=sse"
    assert seen[0].headers["x-goog-api-key"] == KEY
    assert json.loads(seen[0].content) == EXPECTED_REQUEST
    payloads = [json.loads(chunk.data) for chunk in chunks]
    for payload in payloads:
        assert payload["id"] == "resp-7"
        assert payload["object"] == "chat.completion.chunk"
        assert payload["model"] == MODEL
        assert isinstance(payload["created"], int)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [p["choices"][0]["delta"] for p in payloads if p["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert [call["index"] for call in calls] == [0, 1]
    assert [call["function"]["name"] for call in calls] == ["weather", "time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "s"}}
    assert calls[0]["id"] != calls[1]["id"]
    assert payloads[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "total_tokens": 42,
    }
    assert chunks[-1].usage == base.Usage(prompt_tokens=12, completion_tokens=30)
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_parses_multiline_data_and_comments() -> None:
    last = json.dumps(part_event({"text": "!"}, finish="MAX_TOKENS"), indent=1)
    body = (
        b": comment\n\n"
        + sse(STREAM_EVENTS[0])
        + f"data: {last.replace(chr(10), chr(10) + 'data: ')}\n\n".encode()
    )
    chunks = collect(lambda request: httpx.Response(200, content=body), CONVERSATION)
    payloads = [json.loads(chunk.data) for chunk in chunks]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
    assert text == "Hel!"
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"


def test_stream_cut_before_finish_reason_is_malformed() -> None:
    body = sse(*STREAM_EVENTS[:3])
    error = raises(lambda: collect(lambda request: httpx.Response(200, content=body), CONVERSATION))
    assert error.kind == base.MALFORMED


def test_stream_error_payload_is_raised() -> None:
    failure = {
        "error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
    }
    body = sse(STREAM_EVENTS[0], failure)
    error = raises(lambda: collect(lambda request: httpx.Response(200, content=body), CONVERSATION))
    assert error.kind == base.SERVER_ERROR
    assert "overloaded" in error.message


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (httpx.RemoteProtocolError("peer closed connection"), base.CONNECTION),
        (httpx.ReadTimeout("read timed out"), base.TIMEOUT),
    ],
)
def test_stream_broken_midway(failure: Exception, kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Pieces([sse(*STREAM_EVENTS[:2])], fail=failure))

    assert raises(lambda: collect(handler, CONVERSATION)).kind == kind


def test_stream_garbage_data_is_malformed() -> None:
    body = b"data: {not json\n\n"
    error = raises(lambda: collect(lambda request: httpx.Response(200, content=body), CONVERSATION))
    assert error.kind == base.MALFORMED


def google_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, "status": status, "details": details or []}}


@pytest.mark.parametrize(
    ("status", "kind", "google_status"),
    [
        (429, base.RATE_LIMITED, "RESOURCE_EXHAUSTED"),
        (500, base.SERVER_ERROR, "INTERNAL"),
        (503, base.SERVER_ERROR, "UNAVAILABLE"),
        (401, base.AUTH, "UNAUTHENTICATED"),
        (403, base.AUTH, "PERMISSION_DENIED"),
        (400, base.BAD_REQUEST, "INVALID_ARGUMENT"),
        (404, base.BAD_REQUEST, "NOT_FOUND"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_error_statuses(status: int, kind: str, google_status: str, streamed: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"retry-after": "7"} if status == 429 else {}
        body = google_error(status, google_status, f"API key {KEY} says no")
        return httpx.Response(status, json=body, headers=headers)

    call = (
        (lambda: collect(handler, CONVERSATION))
        if streamed
        else (lambda: complete(handler, CONVERSATION))
    )
    error = raises(call)
    assert (error.kind, error.status, error.provider) == (kind, status, "gemini")
    assert google_status in error.message
    assert error.retry_after_s == (7.0 if status == 429 else None)


def test_rate_limit_without_header_uses_retry_info() -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}]
    handler = answering(google_error(429, "RESOURCE_EXHAUSTED", "quota", details), status=429)
    error = raises(lambda: complete(handler, CONVERSATION))
    assert error.kind == base.RATE_LIMITED and error.retry_after_s == 13.0


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>gateway</html>"),
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, json=[ANSWER]),
        httpx.Response(200, json={"candidates": [{"content": {"parts": [{"functionCall": {}}]}}]}),
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
        {"messages": [{"role": "user", "content": "hi"}], "n": 3},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        {"messages": [{"role": "tool", "tool_call_id": "unknown", "content": "x"}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[1]"}}],
                }
            ]
        },
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "retrieval"}]},
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
