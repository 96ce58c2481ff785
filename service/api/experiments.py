"""Experiments: ``POST /v1/admin/experiments`` (start), ``POST /v1/admin/experiments/{name}/stop``
(admin); ``GET /v1/experiments[/{name}]`` with per-arm results (a tenant's own requests only,
the admin's: all)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.common import documented_body, flushed, json_body
from service.auth import authenticate, authenticate_admin
from service.errors import InvalidRequest, NotFound
from service.experiments import Arm, InvalidExperiment
from service.schemas import parse

router = APIRouter()


class ArmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str | None = Field(None, min_length=1, max_length=100)
    router: str
    weight: float = Field(1.0, gt=0)


class ExperimentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200)
    arms: list[ArmRequest] = Field(min_length=2, max_length=10)
    unit: Literal["tenant", "user", "request"] = "tenant"
    margin: float = Field(0.05, ge=0, le=1)
    min_feedback: int = Field(100, ge=2)
    max_requests: int | None = Field(None, ge=2)
    force: bool = False  # start a tenant-unit experiment below SWITCHBOARD_EXPERIMENT_MIN_TENANTS


@router.post(
    "/v1/admin/experiments", status_code=201, openapi_extra=documented_body(ExperimentRequest)
)
async def start(request: Request) -> JSONResponse:
    await authenticate_admin(request)
    body: ExperimentRequest = parse(ExperimentRequest, await json_body(request))
    arms = [Arm(a.name or a.router, a.router, a.weight) for a in body.arms]
    if any(a.router == "challenger" for a in arms) and request.app.state.gateway.challenger is None:
        raise InvalidRequest(
            "no challenger router is loaded: set SWITCHBOARD_CHALLENGER_DIR", param="arms"
        )
    try:
        experiment = await request.app.state.experiments.start(
            body.name,
            arms,
            body.unit,
            body.margin,
            body.min_feedback,
            max_requests=body.max_requests,
            force=body.force,
            min_tenants=request.app.state.settings.experiment_min_tenants,
        )
    except InvalidExperiment as error:
        raise InvalidRequest(str(error), param=error.param, code=error.code) from None
    return JSONResponse(experiment.describe(), status_code=201)


@router.post("/v1/admin/experiments/{name}/stop")
async def stop(name: str, request: Request) -> dict[str, Any]:
    await authenticate_admin(request)
    if not await request.app.state.experiments.stop(name, "stopped by an operator"):
        raise NotFound(f"no running experiment {name!r}", param="name", code="not_found")
    return {"name": name, "status": "stopped"}


@router.get("/v1/experiments")
async def list_experiments(request: Request) -> dict[str, Any]:
    principal = await authenticate(request)
    await flushed(request)
    store = request.app.state.experiments
    scope = None if principal.admin else principal.tenant_id
    return {"data": [await store.results(e, scope) for e in await store.all()]}


@router.get("/v1/experiments/{name}")
async def get_experiment(name: str, request: Request) -> dict[str, Any]:
    principal = await authenticate(request)
    await flushed(request)
    store = request.app.state.experiments
    experiment = await store.get(name)
    if experiment is None:
        raise NotFound(f"no experiment {name!r}", param="name", code="not_found")
    return await store.results(experiment, None if principal.admin else principal.tenant_id)
