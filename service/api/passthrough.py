"""POST /v1/embeddings, /v1/completions (legacy text) and /v1/responses, passed through.

Each is priced from the upstream's usage, held against budgets (its whole body bounds the input,
its output limit the output), recorded in the ledger like a chat request (endpoint
``embeddings``, ``completions``, ``responses``), and retried and fallen back like one. They go to
the OpenAI-compatible upstreams (OpenRouter, OpenAI), which have these endpoints; Anthropic's
and Gemini's direct APIs do not. Embeddings and legacy completions name their model. The
Responses API is also routed: with ``model: "switchboard/auto"`` its ``instructions`` and the
text of its ``input`` are routed as a chat's messages would be, then the body goes to the chosen
model's ``/responses``. Streaming these endpoints is not supported (400); stream chat instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.common import documented_body, json_body
from service.auth import authenticate
from service.catalog import canonical_model_id
from service.errors import APIError, InvalidRequest, NotFound, RateLimited
from service.gateway import Plan, RouteContext
from service.prompts import content_text
from service.providers.base import BAD_REQUEST, Provider, UpstreamError, Usage
from service.record import RequestRecord
from service.schemas import (
    AUTO_MODEL,
    PassthroughRequest,
    controls_from_headers,
    merge_controls,
    parse,
    purpose_from_headers,
)

router = APIRouter()
ENDPOINTS = {
    "embeddings": ("/embeddings", "max_tokens"),
    "completions": ("/completions", "max_tokens"),
    "responses": ("/responses", "max_output_tokens"),
}


def usage_of(endpoint: str, result: dict[str, Any]) -> Usage | None:
    """The upstream's usage in the shape the ledger prices."""
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return None
    cost = usage.get("cost")
    upstream_cost = float(cost) if isinstance(cost, (int, float)) else None
    if endpoint == "responses":
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    else:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return Usage(int(prompt or 0), int(completion or 0), upstream_cost)


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses API body as chat messages, for routing: its instructions, then its input."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    for item in given if isinstance(given, list) else []:
        if not isinstance(item, dict):
            continue
        content = item.get("content", item.get("output"))
        if isinstance(content, list):
            text = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        else:
            text = content_text(content) if content is not None else ""
        role = item.get("role") if item.get("role") in ("system", "user", "assistant") else "user"
        if text:
            messages.append({"role": role, "content": text})
    if not messages:
        raise InvalidRequest("input: the Responses body has no text to answer", param="input")
    return messages


def _plan(
    state: Any, endpoint: str, body: dict[str, Any], record: RequestRecord, request: Request
) -> Plan:
    given = parse(PassthroughRequest, body)
    model = given.model
    record.requested_model = model
    if model == AUTO_MODEL:
        if endpoint != "responses":
            raise InvalidRequest(
                f"{endpoint} are not routed: name the model (GET /v1/models lists them)",
                param="model",
            )
        controls = merge_controls(
            given.switchboard,
            controls_from_headers(request.headers),
        )
        order = state.gateway.route(responses_messages(body), controls, record, RouteContext())
        return Plan(order, auto=True)
    model = canonical_model_id(model)
    if model not in state.catalog:
        raise NotFound(
            f"model {model!r} is not in the catalog (GET /v1/models lists it)",
            param="model",
            code="model_not_found",
        )
    record.chosen_model = model
    return Plan([model], auto=False)


async def passthrough(request: Request, endpoint: str) -> JSONResponse:
    state = request.app.state
    principal = await authenticate(request)
    record = RequestRecord(principal, endpoint)
    caller = (principal.tenant_id, principal.api_key_id)
    full = state.callers.acquire(*caller)
    path, limit_field = ENDPOINTS[endpoint]
    try:
        record.purpose = purpose_from_headers(request.headers, principal.admin)
        if full is not None:
            raise RateLimited(
                f"this {full} already has its limit of requests in flight on this replica",
                code="concurrency_limited",
                retry_after_s=1,
            )
        body = await json_body(request)
        if isinstance(body, dict) and body.get("stream") is True:
            raise InvalidRequest(
                f"streamed {endpoint} are not supported; stream /v1/chat/completions instead",
                param="stream",
            )
        plan = _plan(state, endpoint, body, record, request)
        upstream_body = {k: v for k, v in body.items() if k not in ("switchboard", "model")}
        upstream_body = await state.spend.bound(principal, plan.order, upstream_body, limit_field)

        async def call(provider: Provider, model: str) -> Any:
            if not hasattr(provider, "forward"):
                raise UpstreamError(
                    BAD_REQUEST, f"{provider.name} has no {path} endpoint", provider=provider.name
                )
            async with state.gateway.limits[provider.name].slot():
                return await provider.forward(path, model, upstream_body)

        result, model = await state.gateway.attempt_all(plan, record, call, upstream_body)
        record.served_model = model
        prompt = str(body.get("input") or body.get("prompt") or "")
        record.price(state.catalog, usage_of(endpoint, result), prompt, "")
        record.status, record.http_status = "ok", 200
        result = {**result, "switchboard": record.metadata()}
        return JSONResponse(result, headers=record.headers())
    except APIError as error:
        record.fail(error.status, error.code, error.message)
        return error.response(record.headers())
    finally:
        if full is None:
            state.callers.release(*caller)
        await state.recorder.finish(record)


@router.post("/v1/embeddings", openapi_extra=documented_body(PassthroughRequest))
async def embeddings(request: Request) -> JSONResponse:
    """Embeddings of ``input`` by the named model, passed through, priced and recorded."""
    return await passthrough(request, "embeddings")


@router.post("/v1/completions", openapi_extra=documented_body(PassthroughRequest))
async def completions(request: Request) -> JSONResponse:
    """Legacy text completions by the named model, passed through, priced and recorded."""
    return await passthrough(request, "completions")


@router.post("/v1/responses", openapi_extra=documented_body(PassthroughRequest))
async def responses(request: Request) -> JSONResponse:
    """The Responses API: passed through for a named model, routed for switchboard/auto."""
    return await passthrough(request, "responses")
