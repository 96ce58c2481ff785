"""GET /healthz (alive), /readyz (database and router ready; which upstream and router serve),
/metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {"router": state.gateway.router is not None, "database": False}
    try:
        checks["database"] = await state.ledger.ping()
    except Exception:  # any driver error means not ready
        checks["database"] = False
    ready = all(checks.values()) and not state.shutting_down
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        # which upstream answers (replay answers recorded prompts only), and which router
        "upstream": state.settings.upstream,
        "providers": [p.name for p in state.gateway.providers],
        "router_version": state.gateway.router.version,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
