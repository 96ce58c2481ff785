"""Budgets and alerts: ``/v1/admin/budgets`` (admin: set, delete), ``/v1/budgets`` and
``/v1/alerts`` (tenant-scoped: a tenant sees the budgets of its tenant and its keys; the admin
sees all, global and per-model budgets included)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from service.alerts import WebhookRefused, check_webhook_url
from service.api.common import documented_body, flushed, json_body
from service.auth import authenticate, authenticate_admin
from service.budgets import DEFAULT_ALERT_AT, Budget, parse_scope, utc
from service.errors import InvalidRequest, NotFound
from service.ledger import Principal
from service.schemas import parse

router = APIRouter()
BudgetId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # the database's integer range


class BreakerReset(BaseModel):
    """POST /v1/admin/breakers/reset."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    scope: str = Field(min_length=1, max_length=300)


class BudgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    scope: str = Field(min_length=1, max_length=300)
    period: str = Field(pattern="^(day|week|month|total)$")
    limit_usd: float = Field(ge=0)
    alert_at: list[float] = Field(default_factory=lambda: list(DEFAULT_ALERT_AT), max_length=20)
    webhook_url: str | None = Field(None, max_length=2000)
    email: str | None = Field(None, max_length=2000)
    soft_landing_at: float | None = Field(None, gt=0, lt=1)
    soft_threshold: float | None = Field(None, ge=0, le=1)
    pacing: bool = False


def visible(budget: Budget, principal: Principal) -> bool:
    """Whether the caller may see this budget."""
    if principal.admin:
        return True
    kind, _, value = budget.scope.partition(":")
    if kind == "tenant":
        return value == principal.tenant
    if kind == "key":
        return principal.api_key_id is not None and value == str(principal.api_key_id)
    return False  # global and model budgets sum every tenant's spend: the admin's to see


async def visible_budgets(request: Request, principal: Principal) -> list[Budget]:
    """The budgets the caller may see, read fresh from the database."""
    store = request.app.state.budgets
    store.invalidate()
    return [b for b in await store.all() if visible(b, principal)]


async def _status(request: Request, budget: Budget) -> dict[str, Any]:
    window = await request.app.state.budgets.window(budget)
    return window.status()


@router.post("/v1/admin/budgets", status_code=200, openapi_extra=documented_body(BudgetRequest))
async def set_budget(request: Request) -> dict[str, Any]:
    """Create the budget of (scope, period) or replace its settings; its spend is kept."""
    await authenticate_admin(request)
    body: BudgetRequest = parse(BudgetRequest, await json_body(request))
    settings = request.app.state.settings
    try:
        scope = parse_scope(body.scope)
        if body.webhook_url:
            check_webhook_url(body.webhook_url, settings.allow_private_webhooks)
        budget = await request.app.state.budgets.put(
            scope,
            body.period,
            body.limit_usd,
            tuple(body.alert_at),
            body.webhook_url,
            body.email,
            body.soft_landing_at,
            body.soft_threshold,
            body.pacing,
        )
    except (ValueError, WebhookRefused) as error:
        raise InvalidRequest(str(error), param="scope") from None
    return await _status(request, budget)


@router.delete("/v1/admin/budgets/{budget_id}")
async def delete_budget(budget_id: BudgetId, request: Request) -> dict[str, Any]:
    await authenticate_admin(request)
    if not await request.app.state.budgets.delete(budget_id):
        raise NotFound(f"no budget {budget_id}", param="budget_id", code="budget_not_found")
    return {"id": budget_id, "deleted": True}


@router.get("/v1/budgets")
async def list_budgets(request: Request) -> dict[str, Any]:
    """The caller's budgets with their current spend, holds and reset times."""
    principal = await authenticate(request)
    await flushed(request)
    shown = await visible_budgets(request, principal)
    return {"object": "list", "data": [await _status(request, b) for b in shown]}


@router.get("/v1/budgets/{budget_id}")
async def get_budget(budget_id: BudgetId, request: Request) -> dict[str, Any]:
    principal = await authenticate(request)
    await flushed(request)
    budget = await request.app.state.budgets.get(budget_id)
    if budget is None or not visible(budget, principal):
        raise NotFound(f"no budget {budget_id}", param="budget_id", code="budget_not_found")
    return await _status(request, budget)


@router.get("/v1/alerts")
async def list_alerts(request: Request, limit: int = 100) -> dict[str, Any]:
    """Alerts sent for the caller's budgets (the admin: all), newest first."""
    principal = await authenticate(request)
    await flushed(request)
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be between 1 and 1000", param="limit")
    scopes = None
    if not principal.admin:
        scopes = [b.scope for b in await visible_budgets(request, principal)]
    rows = await request.app.state.alerts.list(scopes, limit)
    return {"object": "list", "data": rows}


@router.get("/v1/admin/breakers")
async def list_breakers(request: Request) -> dict[str, Any]:
    """The spend breakers open now."""
    await authenticate_admin(request)
    breaker = request.app.state.breaker
    breaker.invalidate()
    rows = [dict(row) for row in (await breaker.open_scopes()).values()]
    for row in rows:
        for name in ("tripped_at", "open_until"):
            row[name] = utc(row[name]).isoformat() if row[name] else None
    return {"object": "list", "data": rows}


@router.post("/v1/admin/breakers/reset", openapi_extra=documented_body(BreakerReset))
async def reset_breaker(request: Request) -> dict[str, Any]:
    """Close the spend breaker of a scope (``global`` or ``tenant:NAME``)."""
    await authenticate_admin(request)
    scope = parse(BreakerReset, await json_body(request)).scope
    if not await request.app.state.breaker.reset(scope):
        raise NotFound(f"no open spend breaker for {scope}", param="scope", code="not_found")
    return {"scope": scope, "reset": True}
