"""POST /v1/feedback, GET /v1/requests[/{id}] (tenant-scoped); the admin's API keys routes:
GET and POST /v1/admin/keys, POST /v1/admin/keys/{id}/revoke."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from service.api.common import documented_body, flushed, json_body
from service.auth import authenticate, authenticate_admin
from service.errors import Forbidden, InvalidRequest, NotFound
from service.ledger import Principal, tenant_name
from service.schemas import FeedbackRequest, KeyRequest, parse

router = APIRouter()
MAX_LIST = 1000


async def _own_request(request: Request, request_id: str, principal: Principal) -> dict[str, Any]:
    """The ledger row, if it exists and the caller may see it (404 otherwise, either way)."""
    row = await request.app.state.ledger.get_request(request_id)
    if row is None or (not principal.admin and row["tenant_id"] != principal.tenant_id):
        raise NotFound(f"no request {request_id!r}", param="request_id", code="request_not_found")
    return row


@router.post("/v1/feedback", status_code=201, openapi_extra=documented_body(FeedbackRequest))
async def feedback(request: Request) -> JSONResponse:
    """Rate an answer by its request id: a score in [0, 1] or thumbs up/down."""
    principal = await authenticate(request)
    await flushed(request)
    body: FeedbackRequest = parse(FeedbackRequest, await json_body(request))
    if body.source != "user" and not principal.admin:
        raise Forbidden(
            f"source {body.source!r} is reserved for the admin key (the judge); tenants send "
            "source 'user'",
            param="source",
        )
    score = body.value()
    row = await _own_request(request, body.request_id, principal)
    feedback_id = await request.app.state.ledger.add_feedback(
        row["id"], row["tenant_id"], score, body.comment, body.source
    )
    return JSONResponse(
        {"id": feedback_id, "request_id": row["id"], "score": score}, status_code=201
    )


@router.get("/v1/requests")
async def list_requests(request: Request, limit: int = 50, status: str | None = None) -> dict:
    """The caller's newest requests (the admin's: everyone's) and their totals."""
    principal = await authenticate(request)
    await flushed(request)
    if not 1 <= limit <= MAX_LIST:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIST}", param="limit")
    if status not in (None, "ok", "error"):
        raise InvalidRequest("status must be 'ok' or 'error'", param="status")
    ledger = request.app.state.ledger
    scope = None if principal.admin else principal.tenant_id
    rows = await ledger.list_requests(scope, limit, status)
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
    return {"object": "list", "data": rows, "summary": await ledger.request_totals(scope)}


@router.get("/v1/requests/{request_id}")
async def get_request(request_id: str, request: Request) -> dict[str, Any]:
    """The full ledger record of one of the caller's requests."""
    principal = await authenticate(request)
    await flushed(request)
    row = await _own_request(request, request_id, principal)
    row["created_at"] = row["created_at"].isoformat()
    return row


@router.post("/v1/admin/keys", status_code=201, openapi_extra=documented_body(KeyRequest))
async def create_key(request: Request) -> JSONResponse:
    """A new API key for a tenant (created if new). Admin only; the key is shown once."""
    await authenticate_admin(request)
    body: KeyRequest = parse(KeyRequest, await json_body(request))
    try:
        tenant = tenant_name(body.tenant)
    except ValueError as error:
        raise InvalidRequest(f"tenant: {error}", param="tenant") from None
    key, key_id = await request.app.state.ledger.create_key(tenant)
    return JSONResponse({"tenant": tenant, "key": key, "id": key_id}, status_code=201)


def _key_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "created_at": row["created_at"].isoformat(),
        "revoked_at": row["revoked_at"].isoformat() if row["revoked_at"] else None,
    }


@router.get("/v1/admin/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    """Every API key (id, tenant, prefix, created_at, revoked_at; never the key). Admin only."""
    await authenticate_admin(request)
    rows = await request.app.state.ledger.list_keys()
    return {"object": "list", "data": [_key_json(row) for row in rows]}


@router.post("/v1/admin/keys/{key_id}/revoke")
async def revoke_key(
    key_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request
) -> dict[str, Any]:
    """Revoke a key: every replica refuses it within about a second. Admin only."""
    await authenticate_admin(request)
    row = await request.app.state.ledger.revoke_key(key_id)
    if row is None:
        raise NotFound(f"no API key {key_id}", param="key_id", code="key_not_found")
    return _key_json(row)
