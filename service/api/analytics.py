"""GET /v1/analytics/...: spend, savings, routing mix, quality, the router's cost-quality curve
and budgets. Tenant-scoped: a tenant sees its own requests; the admin sees everyone's, or one
tenant's with ``?tenant=NAME``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.analytics import Range, Scope, parse_range
from service.api.budgets import visible_budgets
from service.api.common import flushed
from service.auth import authenticate
from service.errors import Forbidden, InvalidRequest, NotFound
from service.ledger import now

router = APIRouter(prefix="/v1/analytics")


async def _scope(request: Request, tenant: str | None) -> Scope:
    principal = await authenticate(request)
    await flushed(request)
    if not principal.admin:
        if tenant is not None and tenant != principal.tenant:
            raise Forbidden("a tenant sees only its own analytics", param="tenant")
        return Scope(principal.tenant_id)
    if tenant is None:
        return Scope(None)
    tenant_id = await request.app.state.analytics.tenant_id(tenant)
    if tenant_id is None:
        raise NotFound(f"no tenant {tenant!r}", param="tenant", code="tenant_not_found")
    return Scope(tenant_id)


def _range(start: str | None, end: str | None) -> Range:
    try:
        return parse_range(start, end, now())
    except ValueError as error:
        raise InvalidRequest(
            str(error), param="start" if "start" in str(error) else "end"
        ) from None


@router.get("/summary")
async def summary(
    request: Request,
    start: str | None = None,
    end: str | None = None,
    tenant: str | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    scope = await _scope(request, tenant)
    try:
        return await request.app.state.analytics.summary(scope, _range(start, end), reference)
    except ValueError as error:
        raise InvalidRequest(str(error), param="reference") from None


@router.get("/spend")
async def spend(
    request: Request,
    start: str | None = None,
    end: str | None = None,
    tenant: str | None = None,
    group_by: str = "day",
    by: str = "none",
) -> dict[str, Any]:
    scope = await _scope(request, tenant)
    span = _range(start, end)
    try:
        rows = await request.app.state.analytics.spend(scope, span, group_by, by)
    except ValueError as error:
        param = "group_by" if "group_by" in str(error) else "by"
        raise InvalidRequest(str(error), param=param) from None
    return {"range": span.describe(), "group_by": group_by, "by": by, "data": rows}


@router.get("/mix")
async def mix(
    request: Request, start: str | None = None, end: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    scope = await _scope(request, tenant)
    span = _range(start, end)
    return {"range": span.describe(), "data": await request.app.state.analytics.mix(scope, span)}


@router.get("/quality")
async def quality(
    request: Request, start: str | None = None, end: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    scope = await _scope(request, tenant)
    span = _range(start, end)
    return {"range": span.describe(), **await request.app.state.analytics.quality(scope, span)}


@router.get("/curve")
async def curve(
    request: Request, start: str | None = None, end: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    scope = await _scope(request, tenant)
    span = _range(start, end)
    points = await request.app.state.analytics.curve(scope, span)
    return {"range": span.describe(), "data": points}


@router.get("/budgets")
async def budgets(request: Request) -> dict[str, Any]:
    principal = await authenticate(request)
    await flushed(request)
    store = request.app.state.budgets
    shown = await visible_budgets(request, principal)
    return {"data": await request.app.state.analytics.budgets(store, shown)}
