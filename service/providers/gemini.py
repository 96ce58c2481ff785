"""Google Gemini adapter: OpenAI chat-completions requests in, OpenAI shapes out.

The OpenAI body becomes a ``generateContent`` request (system and developer messages become
``systemInstruction``, tool calls and results become ``functionCall``/``functionResponse``
parts); the answer, or the ``streamGenerateContent?alt=sse`` stream of partial responses,
becomes a ``chat.completion`` or a sequence of ``chat.completion.chunk``s. Only text content
parts are translated: image parts and ``n > 1`` fail with ``BAD_REQUEST`` before anything is
sent. A function call's ``thoughtSignature`` travels in the OpenAI tool call as
``extra_content.google.thought_signature`` (Google's own OpenAI-compatible convention) so that a
client replaying the conversation hands it back.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from service.providers.base import (
    BAD_REQUEST,
    MALFORMED,
    SERVER_ERROR,
    Chunk,
    Completion,
    UpstreamError,
    Usage,
    error_for_status,
    sse_events,
    transport_failure,
)

PROVIDER = "gemini"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
# Gemini 3+ rejects replayed function calls without a signature; this documented placeholder
# stands in for calls that did not come from Gemini (another provider, or a stripped client).
_PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"
# Finish reasons that mean the answer was withheld or cut by a filter.
_TEXT_FILTERS = {"SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"}
_IMAGE_FILTERS = {"IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"}
_FILTERED = frozenset(_TEXT_FILTERS | _IMAGE_FILTERS)


def native_model(model_id: str) -> str:
    """Gemini's model name for a catalog id: ``google/gemini-2.0-flash-001`` -> ``gemini-...``."""
    return model_id.removeprefix("google/")


def _bad(message: str) -> UpstreamError:
    return UpstreamError(BAD_REQUEST, message, provider=PROVIDER)


# --- request: OpenAI -> Gemini ----------------------------------------------------------------


def _texts(content: Any) -> list[str]:
    """The texts of OpenAI message content (a string or text parts); empty text is dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise _bad(f"content part type {part.get('type')!r} is not supported for Gemini")
        if part.get("text"):
            texts.append(part["text"])
    return texts


def _needs_signature(native: str) -> bool:
    match = re.match(r"gemini-(\d+)", native)
    return match is not None and int(match.group(1)) >= 3


def _model_parts(message: dict[str, Any], sign: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": text} for text in _texts(message.get("content"))]
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        try:
            args = json.loads(function.get("arguments") or "{}")
        except ValueError as exc:
            raise _bad(f"tool call {call.get('id')!r} arguments are not JSON") from exc
        if not isinstance(args, dict):
            raise _bad(f"tool call {call.get('id')!r} arguments are not a JSON object")
        part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": args}}
        signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        if signature or (sign and position == 0):
            part["thoughtSignature"] = signature or _PLACEHOLDER_SIGNATURE
        parts.append(part)
    return parts


def _function_response(message: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    name = names.get(message.get("tool_call_id") or "") or message.get("name")
    if not name:
        raise _bad(f"tool message {message.get('tool_call_id')!r} answers no earlier tool call")
    text = "".join(_texts(message.get("content")))
    try:
        output = json.loads(text)
    except ValueError:
        output = text
    return [{"functionResponse": {"name": name, "response": {"output": output}}}]


def _contents(messages: list[dict[str, Any]], sign: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """The system texts and the alternating user/model contents for OpenAI messages."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the function responses
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(message.get("content")))
            continue
        if role == "user":
            native, parts = "user", [{"text": text} for text in _texts(message.get("content"))]
        elif role == "assistant":
            names.update({c["id"]: c["function"]["name"] for c in message.get("tool_calls") or []})
            native, parts = "model", _model_parts(message, sign)
        elif role == "tool":
            native, parts = "user", _function_response(message, names)
        else:
            raise _bad(f"message role {role!r} is not supported for Gemini")
        if not parts:
            continue
        if contents and contents[-1]["role"] == native:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": native, "parts": parts})
    return system, contents


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    response_format = body.get("response_format") or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    return config


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise _bad(f"tool type {tool.get('type')!r} is not supported for Gemini")
    function = tool["function"]
    declaration = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):  # JSON Schema as OpenAI clients write it
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def _calling_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    raise _bad(f"tool_choice {choice!r} is not supported")


def _build_request(model: str, body: dict[str, Any]) -> dict[str, Any]:
    if (body.get("n") or 1) != 1:
        raise _bad("n > 1 is not supported by this adapter")
    sign = _needs_signature(native_model(model))
    system, contents = _contents(body.get("messages") or [], sign)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    if body.get("tools"):
        request["tools"] = [{"functionDeclarations": [_declaration(t) for t in body["tools"]]}]
        calling = _calling_config(body.get("tool_choice"))
        if calling:
            request["toolConfig"] = {"functionCallingConfig": calling}
    return request


def to_gemini_request(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent request for an OpenAI chat-completions body; BAD_REQUEST if not."""
    try:
        return _build_request(model, body)
    except UpstreamError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(f"request cannot be translated for Gemini: {exc!r}") from exc


# --- response: Gemini -> OpenAI ---------------------------------------------------------------


def _usage(meta: dict[str, Any]) -> Usage:
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=int(meta.get("promptTokenCount") or 0),
        completion_tokens=int(meta.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=int(meta.get("cachedContentTokenCount") or 0),
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


def _tool_call(part: dict[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    arguments = json.dumps(call.get("args") or {})
    out: dict[str, Any] = {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }
    if part.get("thoughtSignature"):
        out["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return out


def _read_candidate(candidate: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The answer texts (thoughts left out) and OpenAI tool calls of one candidate."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "functionCall" in part:
            calls.append(_tool_call(part))
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    return texts, calls


def _finish(reason: Any, has_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def _blocked(data: dict[str, Any]) -> bool:
    return bool((data.get("promptFeedback") or {}).get("blockReason"))


def _completion(model: str, data: Any) -> Completion:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("candidates"):
        candidate = data["candidates"][0]
        texts, calls = _read_candidate(candidate)
        finish = _finish(candidate.get("finishReason"), bool(calls))
    elif _blocked(data):
        texts, calls, finish = [], [], "content_filter"
    else:
        raise ValueError("no candidates")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    usage = _usage(data.get("usageMetadata") or {})
    body = {
        "id": data.get("responseId") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": openai_usage(usage),
    }
    return Completion(body, usage)


def to_openai_completion(model: str, data: Any) -> Completion:
    """The OpenAI ``chat.completion`` for a generateContent response; MALFORMED if not one."""
    try:
        return _completion(model, data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        message = f"unexpected response shape: {exc!r}"
        raise UpstreamError(MALFORMED, message, status=200, provider=PROVIDER) from exc


# --- streaming ----------------------------------------------------------------------------------


class _StreamTranslator:
    """Turns streamed generateContent responses into OpenAI chunks."""

    def __init__(self, model: str):
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.started = False
        self.tool_calls = 0
        self.usage: dict[str, Any] = {}
        self.finish: str | None = None

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

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        """The chunks for one partial response; raises UpstreamError for an in-stream error."""
        if isinstance(event.get("error"), dict):
            error = event["error"]
            code = error.get("code")
            message = f"stream error {error.get('status')}: {error.get('message')}"
            if isinstance(code, int):
                raise error_for_status(code, message, None, PROVIDER)
            raise UpstreamError(SERVER_ERROR, message, provider=PROVIDER)
        chunks = []
        if not self.started:
            self.started = True
            self.id = event.get("responseId") or self.id
            chunks.append(self.delta({"role": "assistant", "content": ""}))
        if isinstance(event.get("usageMetadata"), dict):
            self.usage = event["usageMetadata"]
        if not event.get("candidates"):
            if _blocked(event):
                self.finish = "content_filter"
            return chunks
        candidate = event["candidates"][0]
        texts, calls = _read_candidate(candidate)
        if texts:
            chunks.append(self.delta({"content": "".join(texts)}))
        for call in calls:  # Gemini sends each call whole
            chunks.append(self.delta({"tool_calls": [{"index": self.tool_calls, **call}]}))
            self.tool_calls += 1
        if candidate.get("finishReason"):
            self.finish = _finish(candidate["finishReason"], self.tool_calls > 0)
        return chunks

    def close(self) -> list[Chunk]:
        """The finish and usage chunks once the stream has ended; MALFORMED if it was cut."""
        if self.finish is None:
            raise UpstreamError(MALFORMED, "stream ended before a finishReason", provider=PROVIDER)
        return [self.delta({}, self.finish), self.chunk([], _usage(self.usage))]


# --- the provider -------------------------------------------------------------------------------


def _error_details(response: httpx.Response) -> tuple[str, str | None]:
    """The message of a Gemini error body and the retry delay (seconds) its RetryInfo gives."""
    try:
        payload = response.json()
        error = (payload[0] if isinstance(payload, list) else payload)["error"]
        delays = [d.get("retryDelay") for d in error.get("details") or [] if isinstance(d, dict)]
        delay = next((d.removesuffix("s") for d in delays if isinstance(d, str)), None)
        return f"{error.get('status', 'error')}: {error['message']}", delay
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return f"HTTP {response.status_code}: {response.text[:300]}", None


class GeminiProvider:
    """The Gemini API as an upstream for ``google/gemini...`` catalog models."""

    name = PROVIDER

    def __init__(self, api_key: str, client: httpx.AsyncClient, base_url: str = DEFAULT_BASE_URL):
        self._api_key = api_key
        self._client = client
        self._base = base_url.rstrip("/") + "/v1beta/models/"

    def serves(self, model: str) -> bool:
        """Whether ``model`` is a Gemini catalog id."""
        return model.startswith("google/gemini")

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._api_key, "content-type": "application/json"}

    def _status_error(self, response: httpx.Response) -> UpstreamError:
        message, delay = _error_details(response)
        retry_after = response.headers.get("retry-after") or delay
        return error_for_status(response.status_code, message, retry_after, PROVIDER)

    async def complete(self, model: str, body: dict[str, Any]) -> Completion:
        """One non-streamed generateContent call, answered as an OpenAI ``chat.completion``."""
        request = to_gemini_request(model, body)
        url = f"{self._base}{native_model(model)}:generateContent"
        try:
            response = await self._client.post(url, headers=self._headers(), json=request)
            if not response.is_success:
                raise self._status_error(response)
            return to_openai_completion(model, response.json())
        except UpstreamError:
            raise
        except Exception as exc:
            raise transport_failure(exc, PROVIDER) from exc

    async def stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        """One streamGenerateContent call as OpenAI chunks; a cut or failed stream raises."""
        request = to_gemini_request(model, body)
        url = f"{self._base}{native_model(model)}:streamGenerateContent"
        translator = _StreamTranslator(model)
        try:
            async with self._client.stream(
                "POST", url, params={"alt": "sse"}, headers=self._headers(), json=request
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._status_error(response)
                async for _, data in sse_events(response):
                    for chunk in translator.feed(json.loads(data)):
                        yield chunk
            for chunk in translator.close():
                yield chunk
        except UpstreamError:
            raise
        except Exception as exc:
            raise transport_failure(exc, PROVIDER) from exc
