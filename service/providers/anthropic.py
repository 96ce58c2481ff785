"""Anthropic Messages API adapter: OpenAI chat-completions requests in, OpenAI shapes out.

The OpenAI body becomes a ``POST /v1/messages`` request (system and developer messages become
the top-level ``system``, tool calls and results become ``tool_use``/``tool_result`` blocks);
the answer, or its SSE stream of message and content-block events, becomes a
``chat.completion`` or a sequence of ``chat.completion.chunk``s. Only text content parts are
translated: image parts and ``n > 1`` fail with ``BAD_REQUEST`` before anything is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from service.providers.base import (
    BAD_REQUEST,
    MALFORMED,
    RATE_LIMITED,
    SERVER_ERROR,
    Chunk,
    Completion,
    UpstreamError,
    Usage,
    error_for_status,
    sse_events,
    transport_failure,
)

PROVIDER = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

# Catalog names whose Anthropic id is not simply the dotted version with hyphens.
_NATIVE_NAMES = {
    "claude-3.5-sonnet": "claude-3-5-sonnet-latest",
    "claude-3.5-haiku": "claude-3-5-haiku-latest",
    "claude-3-haiku": "claude-3-haiku-20240307",
    "claude-3-sonnet": "claude-3-sonnet-20240229",
    "claude-3-opus": "claude-3-opus-20240229",
    "claude-sonnet-4": "claude-sonnet-4-0",
    "claude-opus-4": "claude-opus-4-0",
}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def native_model(model_id: str) -> str:
    """Anthropic's model id for a catalog id: ``anthropic/claude-3.5-sonnet`` -> ``-latest``."""
    name = model_id.removeprefix("anthropic/")
    return _NATIVE_NAMES.get(name, name.replace(".", "-"))


def _bad(message: str) -> UpstreamError:
    return UpstreamError(BAD_REQUEST, message, provider=PROVIDER)


# --- request: OpenAI -> Anthropic -------------------------------------------------------------


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (a string or text parts) as text blocks; empty text is dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        if part.get("type") != "text":
            raise _bad(f"content part type {part.get('type')!r} is not supported for Anthropic")
        if part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
    return blocks


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call["function"]
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError as exc:
            raise _bad(f"tool call {call.get('id')!r} arguments are not JSON") from exc
        if not isinstance(arguments, dict):
            raise _bad(f"tool call {call.get('id')!r} arguments are not a JSON object")
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}
        )
    return blocks


def _tool_result(message: dict[str, Any]) -> list[dict[str, Any]]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    text = "".join(b["text"] for b in _text_blocks(message.get("content")))
    if text:
        block["content"] = text
    return [block]


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the alternating user/assistant turns for OpenAI messages."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(b["text"] for b in _text_blocks(message.get("content")))
            continue
        if role == "user":
            native, blocks = "user", _text_blocks(message.get("content"))
        elif role == "assistant":
            native, blocks = "assistant", _assistant_blocks(message)
        elif role == "tool":
            native, blocks = "user", _tool_result(message)
        else:
            raise _bad(f"message role {role!r} is not supported for Anthropic")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == native:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": native, "content": blocks})
    return "\n\n".join(system), turns


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise _bad(f"tool type {tool.get('type')!r} is not supported for Anthropic")
    function = tool["function"]
    native = {"name": function["name"], "input_schema": function.get("parameters") or _EMPTY_SCHEMA}
    if function.get("description"):
        native["description"] = function["description"]
    return native


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    if choice is None and parallel is not False:
        return None  # Anthropic's default is auto
    if choice in (None, "auto"):
        native: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        native = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        native = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _bad(f"tool_choice {choice!r} is not supported")
    if parallel is False:
        native["disable_parallel_tool_use"] = True
    return native


def _build_request(model: str, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    if (body.get("n") or 1) != 1:
        raise _bad("n > 1 is not supported by Anthropic")
    system, messages = _messages(body.get("messages") or [])
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    request: dict[str, Any] = {
        "model": native_model(model),
        "max_tokens": max_tokens,
        "messages": messages,
    }
    if system:
        request["system"] = system
    if body.get("temperature") is not None:
        request["temperature"] = min(float(body["temperature"]), 1.0)  # Anthropic's range is 0-1
    elif body.get("top_p") is not None:  # newer models reject temperature and top_p together
        request["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        request["tools"] = [_tool(tool) for tool in body["tools"]]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice:
            request["tool_choice"] = choice
    if body.get("user"):
        request["metadata"] = {"user_id": str(body["user"])}
    if stream:
        request["stream"] = True
    return request


def to_anthropic_request(model: str, body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat-completions body; BAD_REQUEST if impossible."""
    try:
        return _build_request(model, body, stream)
    except UpstreamError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(f"request cannot be translated for Anthropic: {exc!r}") from exc


# --- response: Anthropic -> OpenAI ------------------------------------------------------------


def _usage(raw: dict[str, Any]) -> Usage:
    cached = int(raw.get("cache_read_input_tokens") or 0)
    created = int(raw.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(raw.get("input_tokens") or 0) + cached + created,
        completion_tokens=int(raw.get("output_tokens") or 0),
        cached_tokens=cached,
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    """The OpenAI ``usage`` object for a ``Usage``."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


def _finish(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop")


def _tool_call(block: dict[str, Any], arguments: str) -> dict[str, Any]:
    function = {"name": block["name"], "arguments": arguments}
    return {"id": block["id"], "type": "function", "function": function}


def _completion(model: str, data: Any) -> Completion:
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise ValueError("no content list")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data["content"]:
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_use":
            calls.append(_tool_call(block, json.dumps(block.get("input") or {})))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    usage = _usage(data.get("usage") or {})
    body = {
        "id": data.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": _finish(data.get("stop_reason"))}
        ],
        "usage": openai_usage(usage),
    }
    return Completion(body, usage)


def to_openai_completion(model: str, data: Any) -> Completion:
    """The OpenAI ``chat.completion`` for a Messages API response; MALFORMED if it is not one."""
    try:
        return _completion(model, data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        message = f"unexpected response shape: {exc!r}"
        raise UpstreamError(MALFORMED, message, status=200, provider=PROVIDER) from exc


# --- streaming ----------------------------------------------------------------------------------


@dataclass
class _ToolBlock:
    position: int  # the OpenAI tool_calls index
    start_input: dict[str, Any]
    sent_arguments: bool = False


class _StreamTranslator:
    """Turns Messages API stream events into OpenAI chunks, tracking tool calls and usage."""

    def __init__(self, model: str):
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.tools: dict[int, _ToolBlock] = {}
        self.usage: dict[str, Any] = {}
        self.finish = "stop"
        self.done = False

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> Chunk:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = openai_usage(usage)
        return Chunk(json.dumps(payload).encode(), usage)

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return self.chunk([{"index": 0, "delta": delta, "finish_reason": finish}])

    def arguments(self, tool: _ToolBlock, fragment: str) -> Chunk:
        tool.sent_arguments = True
        call = {"index": tool.position, "function": {"arguments": fragment}}
        return self.delta({"tool_calls": [call]})

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        """The chunks for one stream event; raises UpstreamError for an ``error`` event."""
        kind = event.get("type")
        if kind == "message_start":
            message = event["message"]
            self.id = message.get("id") or self.id
            self.usage.update(message.get("usage") or {})
            return [self.delta({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(event["index"], event["content_block"])
        if kind == "content_block_delta":
            return self._block_delta(event["index"], event["delta"])
        if kind == "content_block_stop":
            tool = self.tools.get(event["index"])
            if tool is not None and not tool.sent_arguments:
                return [self.arguments(tool, json.dumps(tool.start_input))]
            return []
        if kind == "message_delta":
            usage = event.get("usage") or {}
            self.usage.update({key: value for key, value in usage.items() if value is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish = _finish(reason)
            return []
        if kind == "message_stop":
            self.done = True
            return [self.delta({}, self.finish), self.chunk([], _usage(self.usage))]
        if kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            retry = RATE_LIMITED if error.get("type") == "rate_limit_error" else SERVER_ERROR
            message = f"stream error {error.get('type')}: {error.get('message')}"
            raise UpstreamError(retry, message, provider=PROVIDER)
        return []  # ping, and event types added after this adapter was written

    def _block_start(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        if block.get("type") == "text" and block.get("text"):
            return [self.delta({"content": block["text"]})]
        if block.get("type") == "tool_use":
            tool = _ToolBlock(len(self.tools), block.get("input") or {})
            self.tools[index] = tool
            return [self.delta({"tool_calls": [{"index": tool.position, **_tool_call(block, "")}]})]
        return []  # thinking blocks are not part of the OpenAI answer

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[Chunk]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self.delta({"content": delta["text"]})]
        tool = self.tools.get(index)
        if delta.get("type") == "input_json_delta" and tool and delta.get("partial_json"):
            return [self.arguments(tool, delta["partial_json"])]
        return []


# --- the provider -------------------------------------------------------------------------------


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"{error.get('type', 'error')}: {error['message']}"
    except (ValueError, AttributeError):
        pass
    return f"HTTP {response.status_code}: {response.text[:300]}"


class AnthropicProvider:
    """The Anthropic Messages API as an upstream for ``anthropic/...`` catalog models."""

    name = PROVIDER

    def __init__(self, api_key: str, client: httpx.AsyncClient, base_url: str = DEFAULT_BASE_URL):
        self._api_key = api_key
        self._client = client
        self._url = base_url.rstrip("/") + "/v1/messages"

    def serves(self, model: str) -> bool:
        """Whether ``model`` is an Anthropic catalog id."""
        return model.startswith("anthropic/")

    def _headers(self) -> dict[str, str]:
        return {
            "x-api-key": self._api_key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }

    def _status_error(self, response: httpx.Response) -> UpstreamError:
        message = _error_message(response)
        return error_for_status(
            response.status_code, message, response.headers.get("retry-after"), PROVIDER
        )

    async def complete(self, model: str, body: dict[str, Any]) -> Completion:
        """One non-streamed Messages call, answered as an OpenAI ``chat.completion``."""
        request = to_anthropic_request(model, body)
        try:
            response = await self._client.post(self._url, headers=self._headers(), json=request)
            if not response.is_success:
                raise self._status_error(response)
            return to_openai_completion(model, response.json())
        except UpstreamError:
            raise
        except Exception as exc:
            raise transport_failure(exc, PROVIDER) from exc

    async def stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        """One streamed Messages call as OpenAI chunks; a cut or failed stream raises."""
        request = to_anthropic_request(model, body, stream=True)
        translator = _StreamTranslator(model)
        try:
            async with self._client.stream(
                "POST", self._url, headers=self._headers(), json=request
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._status_error(response)
                async for event, data in sse_events(response):
                    payload = json.loads(data)
                    payload.setdefault("type", event)
                    for chunk in translator.feed(payload):
                        yield chunk
                    if translator.done:
                        return
            raise UpstreamError(MALFORMED, "stream ended before message_stop", provider=PROVIDER)
        except UpstreamError:
            raise
        except Exception as exc:
            raise transport_failure(exc, PROVIDER) from exc
