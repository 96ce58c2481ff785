"""Upstreams that speak the OpenAI chat-completions format: OpenRouter, and OpenAI directly.

Streams are relayed without re-serializing: each upstream ``data:`` payload is handed on as the
bytes it arrived as; only payloads that carry usage are parsed (to price the request).
OpenRouter gets its attribution headers and always reports ``usage`` (and ``usage.cost``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from service.providers.base import (
    CONNECTION,
    MALFORMED,
    SERVER_ERROR,
    TIMEOUT,
    Chunk,
    Completion,
    UpstreamError,
    Usage,
    error_for_status,
)

DONE = b"[DONE]"


def usage_from(payload: dict[str, Any]) -> Usage | None:
    """Usage of an OpenAI-shaped response or chunk, with OpenRouter's ``cost`` if present."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    cost = usage.get("cost")
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        upstream_cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
        cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else str(error)
        return str(message or response.reason_phrase)[:500]
    except (ValueError, AttributeError):
        return (response.text or response.reason_phrase)[:500]


class OpenAICompatibleProvider:
    """POST {base_url}/chat/completions with a bearer key; ``native`` maps catalog ids."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        client: httpx.AsyncClient,
        serves: Callable[[str], bool],
        native: Callable[[str], str] = lambda model: model,
        extra_headers: dict[str, str] | None = None,
        stream_usage: bool = True,
    ):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.client = client
        self._serves = serves
        self._native = native
        self.stream_usage = stream_usage
        self.headers = {"Authorization": f"Bearer {api_key}", **(extra_headers or {})}

    def serves(self, model: str) -> bool:
        return self._serves(model)

    def _fail(self, kind: str, message: str, status: int | None = None) -> UpstreamError:
        return UpstreamError(kind, f"{self.name}: {message}", status, provider=self.name)

    async def _post(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` as JSON; the answer's JSON object, or an UpstreamError."""
        try:
            response = await self.client.post(url, json=payload, headers=self.headers)
        except httpx.TimeoutException as error:
            raise self._fail(TIMEOUT, f"timed out ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise self._fail(CONNECTION, f"connection failed ({type(error).__name__})") from None
        if response.status_code >= 400:
            raise error_for_status(
                response.status_code,
                f"{self.name}: {_error_message(response)}",
                response.headers.get("retry-after"),
                self.name,
            )
        try:
            result = response.json()
        except ValueError:
            raise self._fail(MALFORMED, "answer is not JSON", response.status_code) from None
        if not isinstance(result, dict) or result.get("error"):
            detail = result.get("error") if isinstance(result, dict) else None
            message = detail.get("message") if isinstance(detail, dict) else "unexpected answer"
            raise self._fail(SERVER_ERROR, str(message), response.status_code)
        return result

    async def complete(self, model: str, body: dict[str, Any]) -> Completion:
        payload = {**body, "model": self._native(model), "stream": False}
        payload.pop("stream_options", None)
        result = await self._post(self.url, payload)
        if not isinstance(result.get("choices"), list):
            raise self._fail(MALFORMED, "answer has no choices", 200)
        return Completion(body=result, usage=usage_from(result))

    async def forward(self, path: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` (model replaced) to another endpoint of the same API: ``/embeddings``,
        ``/completions``, ``/responses``; the JSON answer."""
        return await self._post(self.base_url + path, {**body, "model": self._native(model)})

    async def stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        payload = {**body, "model": self._native(model), "stream": True}
        if self.stream_usage:
            payload["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        try:
            async with self.client.stream(
                "POST", self.url, json=payload, headers=self.headers
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_for_status(
                        response.status_code,
                        f"{self.name}: {_error_message(response)}",
                        response.headers.get("retry-after"),
                        self.name,
                    )
                done = False
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank lines, comments (": OPENROUTER PROCESSING"), event names
                    data = line[5:].strip().encode()
                    if data == DONE:
                        done = True
                        break
                    yield self._chunk(data)
                if not done:
                    raise self._fail(CONNECTION, "stream ended before [DONE]")
        except httpx.TimeoutException as error:
            raise self._fail(TIMEOUT, f"timed out ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise self._fail(CONNECTION, f"stream broke ({type(error).__name__})") from None

    def _chunk(self, data: bytes) -> Chunk:
        """One relayed chunk; a chunk that is not a JSON object is a malformed answer (before
        the first byte reached the client: retried or fallen back; after: the stream ends
        with an error event), never passed on."""
        try:
            parsed = json.loads(data)
        except ValueError:
            raise self._fail(MALFORMED, "stream chunk is not JSON") from None
        if not isinstance(parsed, dict):
            raise self._fail(MALFORMED, "stream chunk is not a JSON object")
        if parsed.get("error"):
            error = parsed["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise self._fail(SERVER_ERROR, f"error in stream: {message}")
        usage = usage_from(parsed) if "usage" in parsed else None
        return Chunk(data=data, usage=usage, payload=parsed)


def openrouter(
    base_url: str, api_key: str, client: httpx.AsyncClient, app_url: str, app_title: str
) -> OpenAICompatibleProvider:
    """OpenRouter: every catalog id is an OpenRouter id."""
    return OpenAICompatibleProvider(
        "openrouter",
        base_url,
        api_key,
        client,
        serves=lambda model: "/" in model,
        extra_headers={"HTTP-Referer": app_url, "X-Title": app_title},
    )


def openai_direct(
    base_url: str, api_key: str, client: httpx.AsyncClient
) -> OpenAICompatibleProvider:
    """OpenAI's own API for ``openai/*`` catalog ids."""
    return OpenAICompatibleProvider(
        "openai",
        base_url,
        api_key,
        client,
        serves=lambda model: model.startswith("openai/"),
        native=lambda model: model.removeprefix("openai/"),
    )
