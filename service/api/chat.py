"""POST /v1/chat/completions: route, call the upstream, answer in OpenAI shape, record."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.api.common import documented_body, json_body
from service.auth import authenticate
from service.errors import APIError, RateLimited, RequestTimeout
from service.gateway import Plan, RouteContext
from service.prompts import content_text, prompt_text
from service.providers.base import MALFORMED, Chunk, Provider, UpstreamError
from service.record import RequestRecord
from service.schemas import (
    ChatRequest,
    controls_from_headers,
    merge_controls,
    parse,
    purpose_from_headers,
)
from service.streaming import relay

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=documented_body(ChatRequest))
async def chat_completions(request: Request) -> Response:
    state = request.app.state
    principal = await authenticate(request)
    record = RequestRecord(principal, "chat.completions")
    streaming = False
    caller = (principal.tenant_id, principal.api_key_id)
    full = state.callers.acquire(*caller)
    try:
        record.purpose = purpose_from_headers(request.headers, principal.admin)
        if full is not None:
            limit = state.callers.limits[full]
            raise RateLimited(
                f"this {'tenant' if full == 'tenant' else 'API key'} already has {limit} requests "
                "in flight on this replica; retry when one ends",
                code="concurrency_limited",
                retry_after_s=1,
            )
        limiter = state.key_rate_limit
        wait = limiter.wait_s(principal.api_key_id or principal.tenant) if limiter else 0.0
        if wait > 0:
            raise RateLimited(
                "this API key is over its request rate", code="key_rate_limited", retry_after_s=wait
            )
        chat: ChatRequest = parse(ChatRequest, await json_body(request))
        record.stream, record.end_user = chat.stream, chat.user
        controls = merge_controls(chat.switchboard, controls_from_headers(request.headers))
        await state.spend.refuse_if_breaker_open(principal)
        context = None
        if chat.auto:
            context = RouteContext(steering=await state.spend.steer(principal))
            experiment = await state.experiments.running()
            if experiment is not None and controls.router is None:
                arm = experiment.assign(principal, chat.user, record.id)
                context.arm, context.arm_router = f"{experiment.name}:{arm.name}", arm.router
        plan = state.gateway.plan(chat, controls, record, context)
        body = await state.spend.bound(principal, plan.order, chat.upstream_body())
        prompt = prompt_text(body["messages"])
        if state.settings.store_content:
            record.prompt = prompt
        async with asyncio.timeout(state.settings.request_timeout_s):
            if chat.stream:

                async def finish(ended: RequestRecord) -> None:
                    state.callers.release(*caller)
                    await state.recorder.finish(ended)

                response = await _open_stream(
                    state, plan, record, body, prompt, chat.include_usage, finish
                )
                streaming = True
                return response
            return await _complete(state, plan, record, body, prompt)
    except TimeoutError:
        error: APIError = RequestTimeout("the request took longer than the gateway's time limit")
        record.fail(error.status, error.code, error.message)
        return error.response(record.headers())
    except APIError as error:
        record.fail(error.status, error.code, error.message)
        return error.response(record.headers())
    finally:
        if not streaming:
            if full is None:
                state.callers.release(*caller)
            await state.recorder.finish(record)


async def _complete(
    state: Any, plan: Plan, record: RequestRecord, body: dict[str, Any], prompt: str
) -> JSONResponse:
    gateway = state.gateway

    async def call(provider: Provider, model: str) -> Any:
        async with gateway.limits[provider.name].slot():
            return await provider.complete(model, body)

    completion, model = await gateway.attempt_all(plan, record, call, body)
    record.served_model = model
    result = completion.body
    choices = result.get("choices") or [{}]
    answer = content_text((choices[0].get("message") or {}).get("content"))
    record.price(state.catalog, completion.usage, prompt, answer)
    if state.settings.store_content:
        record.response = answer
    usage = dict(result.get("usage") or {})
    usage.update(
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        total_tokens=(record.prompt_tokens or 0) + (record.completion_tokens or 0),
    )
    usage.pop("cost", None)
    if record.cost_usd is not None:
        usage["cost"] = record.cost_usd
    result = {**result, "id": record.id, "usage": usage, "switchboard": record.metadata()}
    result.setdefault("model", model)
    record.status, record.http_status = "ok", 200
    return JSONResponse(result, headers=record.headers())


async def _open_stream(
    state: Any,
    plan: Plan,
    record: RequestRecord,
    body: dict[str, Any],
    prompt: str,
    include_usage: bool,
    finish: Callable[[RequestRecord], Awaitable[None]],
) -> StreamingResponse:
    gateway = state.gateway

    async def call(provider: Provider, model: str) -> tuple[Chunk, Any, AsyncExitStack]:
        resources = AsyncExitStack()
        await resources.enter_async_context(gateway.limits[provider.name].slot())
        upstream = provider.stream(model, body)
        resources.push_async_callback(upstream.aclose)  # type: ignore[attr-defined]
        try:
            first = await anext(upstream)
        except StopAsyncIteration:
            await resources.aclose()
            raise UpstreamError(
                MALFORMED, f"{model}: empty stream", provider=provider.name
            ) from None
        except BaseException:
            await resources.aclose()
            raise
        return first, upstream, resources

    (first, upstream, resources), model = await gateway.attempt_all(plan, record, call, body)
    record.served_model = model
    record.first_byte_ms = record.elapsed_ms()
    stream = relay(
        first,
        upstream,
        resources,
        record,
        state.catalog,
        prompt,
        include_usage,
        finish,
    )
    headers = {**record.headers(), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
