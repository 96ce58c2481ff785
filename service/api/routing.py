"""POST /v1/route (the decision alone) and GET /v1/models (the catalog)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.common import documented_body, json_body
from service.auth import authenticate
from service.catalog import canonical_model_id
from service.errors import InvalidRequest, NotFound
from service.gateway import RouteContext
from service.ledger import Principal
from service.record import RequestRecord
from service.schemas import AUTO_MODEL, RouteRequest, controls_from_headers, merge_controls, parse

router = APIRouter()


@router.post("/v1/route", openapi_extra=documented_body(RouteRequest))
async def route(request: Request) -> dict[str, Any]:
    """The routing decision for a prompt or messages, without calling any model."""
    state = request.app.state
    principal: Principal = await authenticate(request)
    body: RouteRequest = parse(RouteRequest, await json_body(request))
    if (body.messages is None) == (body.prompt is None):
        raise InvalidRequest("give exactly one of messages or prompt", param="messages")
    messages = (
        [m.model_dump(exclude_none=True) for m in body.messages]
        if body.messages
        else [{"role": "user", "content": body.prompt}]
    )
    controls = merge_controls(body.switchboard, controls_from_headers(request.headers))
    record = RequestRecord(principal, "route")
    steering = await state.spend.steer(principal)
    order = state.gateway.route(messages, controls, record, RouteContext(steering=steering))
    return {
        "model": record.chosen_model,
        "p_pass": record.p_pass,
        "ood_score": record.ood_score,
        "expected_cost_usd": record.expected_cost_usd,
        "rule": record.rule,
        "threshold": record.threshold,
        "answer_value_usd": record.answer_value_usd,
        "router": record.router,
        "router_version": record.router_version,
        "spend_control": record.spend_control,
        "fallback_order": order,
        "candidates": record.candidates,
        "left_out": record.left_out or [],
    }


def _price(value: float | None) -> str | None:
    return None if value is None else format(value, ".12f").rstrip("0").rstrip(".") or "0"


def _entry(state: Any, model_id: str) -> dict[str, Any]:
    """One catalog model in OpenAI's model shape, with OpenRouter-style pricing."""
    gateway = state.gateway
    info = state.catalog.get(model_id)
    return {
        "id": info.id,
        "object": "model",
        "created": 0,
        "owned_by": info.id.split("/")[0],
        "name": info.name,
        "context_length": info.context_length,
        "pricing": {
            "prompt": _price(info.prompt_usd_per_token),
            "completion": _price(info.completion_usd_per_token),
            "request": _price(info.request_usd),
        },
        "switchboard": {
            # a candidate of switchboard/auto (scored from graded answers), or routable when
            # allowed_models names it (on its prior, if not calibrated), by this router version
            "router_version": gateway.router.version,
            "routable": info.id in gateway.router.models,
            "graded_prompts": gateway.router.graded_prompts(info.id),
            "calibrated": gateway.calibrated(info.id),
            "served": gateway.provider_for(info.id) is not None,
            "not_served_because": gateway.availability.unavailable(info.id),
            "price_source": info.price_source,
            "price_seen_at": info.price_seen_at,
        },
    }


def _auto_entry(state: Any) -> dict[str, Any]:
    router = state.gateway.router  # the champion serving now (it changes on promotion)
    return {
        "id": AUTO_MODEL,
        "object": "model",
        "created": 0,
        "owned_by": "switchboard",
        "name": "switchboard learned router",
        "pricing": {"prompt": "-1", "completion": "-1"},
        "switchboard": {
            "routable": False,
            "router": router.name,
            "router_version": router.version,
            "trained_at": router.metadata.get("trained_at"),
            "candidates": sorted(router.models),
        },
    }


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The catalog in OpenAI list shape with OpenRouter-style pricing (USD per token)."""
    state = request.app.state
    await authenticate(request)
    data = [_auto_entry(state), *(_entry(state, m) for m in state.catalog.ids())]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model (the openai SDK's ``models.retrieve``); 404 ``model_not_found``."""
    state = request.app.state
    await authenticate(request)
    if model_id == AUTO_MODEL:
        return _auto_entry(state)
    if model_id not in state.catalog:
        raise NotFound(
            f"model {model_id!r} is not in the catalog", param="model", code="model_not_found"
        )
    return _entry(state, canonical_model_id(model_id))
