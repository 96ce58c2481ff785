"""``create_app(settings)``: the service, with its router, upstreams, ledger and metrics built in
the lifespan. ``switchboard serve`` runs it under uvicorn."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from service.alerts import Alerts
from service.analytics import Analytics, default_reference
from service.api import (
    analytics,
    budgets,
    chat,
    dashboard,
    experiments,
    health,
    passthrough,
    records,
    routing,
)
from service.api.common import BODY_SCHEMAS
from service.api.text_rules import RejectUnstorableURLs
from service.auth import ADMIN_TENANT, LOCAL_TENANT
from service.availability import Availability, fetch_listing, listed_ids
from service.budgets import BudgetStore
from service.catalog import Catalog
from service.config import Settings
from service.errors import APIError, InvalidRequest, NotFound, PayloadTooLarge
from service.experiments import ExperimentStore
from service.gateway import Gateway
from service.journal import Journal, database_id, replay
from service.ledger import REVOCATION_POLL_S, Ledger, Principal
from service.metrics import Metrics
from service.pacing import Pacer
from service.providers.aiohttp_transport import AiohttpTransport
from service.providers.base import Provider
from service.providers.openai_compat import openai_direct, openrouter
from service.providers.redaction import redacting
from service.providers.replay import ReplayProvider
from service.providers.resilience import CallerConcurrency, KeyRateLimit
from service.recorder import Recorder
from service.routing.learned import LearnedRouter
from service.slow_clients import BodyDeadline
from service.spend_breaker import SpendBreaker
from service.spend_control import SpendControl

log = logging.getLogger("switchboard")


def build_providers(settings: Settings, client: httpx.AsyncClient) -> list[Provider]:
    """The configured upstreams, direct provider APIs before OpenRouter, each behind the
    redactor of every provider key (service.providers.redaction)."""
    if settings.upstream == "replay":
        return [ReplayProvider.from_outcomes(settings.replay_outcomes_path)]
    providers: list[Provider] = []
    if settings.openai_api_key:
        key = settings.openai_api_key.get_secret_value()
        providers.append(openai_direct(settings.openai_base_url, key, client))
    if settings.anthropic_api_key:
        from service.providers.anthropic import AnthropicProvider

        key = settings.anthropic_api_key.get_secret_value()
        providers.append(AnthropicProvider(key, client, settings.anthropic_base_url))
    if settings.gemini_api_key:
        from service.providers.gemini import GeminiProvider

        key = settings.gemini_api_key.get_secret_value()
        providers.append(GeminiProvider(key, client, settings.gemini_base_url))
    if settings.openrouter_api_key:
        key = settings.openrouter_api_key.get_secret_value()
        providers.append(
            openrouter(
                settings.openrouter_base_url, key, client, settings.app_url, settings.app_title
            )
        )
    if not providers:
        raise RuntimeError(
            "SWITCHBOARD_UPSTREAM=openrouter needs OPENROUTER_API_KEY (or a direct provider key)"
        )
    return redacting(providers, settings.provider_secrets())


class BodySizeLimit:
    """413 for bodies over the limit, by Content-Length or by counting a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"the request body is over {self.max_bytes} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_large.response()(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, counted, send)


async def reload_router(state: Any) -> bool:
    """Load the router in ``router_dir`` if its version changed, warm it up, and swap it in:
    requests in flight finish on the old one, none is dropped."""
    settings, gateway = state.settings, state.gateway
    path = settings.router_dir / "router.json"
    version = json.loads(path.read_text()).get("version", "unversioned")
    if version == gateway.router.version:
        return False
    fresh = await asyncio.to_thread(LearnedRouter.load, settings.router_dir)
    await asyncio.to_thread(fresh.p_pass, ["warm up"], fresh.models)
    gateway.router = fresh
    log.warning("now serving router %s (was %s)", fresh.version, state.router_version)
    state.router_version = fresh.version
    return True


async def maintain(state: Any) -> None:
    """Periodic upkeep in every replica (each step is safe to run concurrently in several):
    release the budget holds of processes that died, give back idle budget leases, trip spend
    breakers, recompute budget pacing, apply the experiment stop rules, pick up
    a new champion."""
    while True:
        await asyncio.sleep(state.settings.upkeep_interval_s)
        try:
            await state.availability.refresh()
            await state.budgets.sweep()
            await state.spend.leases.tidy()
            await state.breaker.check()
            await state.pacer.update_all()
            await state.experiments.check_stop()
            await reload_router(state)
        except Exception:  # upkeep must outlive a database hiccup
            log.exception("upkeep failed")


async def refresh_listing(state: Any) -> None:
    """Read the upstream's model listing at start and every ``listing_refresh_s`` (with an
    OpenRouter key): auto routing keeps to the models it lists (service.availability)."""
    settings = state.settings
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    while True:
        try:
            payload = await fetch_listing(settings.openrouter_base_url, key)
            count = await state.availability.record_listing(listed_ids(payload))
            log.info("the upstream lists %d models", count)
        except Exception as error:  # keep serving on the last listing
            log.warning("could not read the upstream's model listing: %s", error)
        await asyncio.sleep(settings.listing_refresh_s)


async def watch_revocations(ledger: Ledger) -> None:
    """Refuse revoked keys within about a second in every replica (the key cache would keep
    them for AUTH_CACHE_SECONDS)."""
    while True:
        await asyncio.sleep(REVOCATION_POLL_S)
        try:
            await ledger.poll_revocations()
        except Exception as error:  # keep watching through a database hiccup
            log.warning("looking for revoked keys failed: %s", error)


async def give_back_leases(state: Any) -> None:
    """At shutdown: the room of this process's budget leases goes back to its windows (if the
    database is away, the leases expire and another replica's upkeep sweeps them)."""
    try:
        await state.spend.leases.tidy(everything=True)
    except Exception as error:
        log.warning("could not give back the budget leases (they expire instead): %s", error)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.migrate import upgrade

        await asyncio.to_thread(upgrade, settings.database_url)
        ledger = Ledger.connect(settings.async_database_url)
        ledger_id = database_id(settings.database_url)
        await replay(settings.journal_dir, ledger.engine, ledger_id)  # what dead processes left
        catalog = Catalog.load(settings.catalog_path)
        router = LearnedRouter.load(settings.router_dir)
        await asyncio.to_thread(router.p_pass, ["warm up"], router.models)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.connect_timeout_s,
                pool=settings.read_timeout_s,
            ),
            transport=AiohttpTransport(max_connections=1000),
        )
        metrics = Metrics()
        state = app.state
        state.settings, state.ledger, state.catalog, state.metrics = (
            settings,
            ledger,
            catalog,
            metrics,
        )
        state.budgets = BudgetStore(ledger.engine, settings.budget_refresh_s)
        state.alerts = Alerts(ledger.engine, settings, client)
        state.breaker = SpendBreaker(ledger.engine, settings, state.alerts)
        state.spend = SpendControl(state.budgets, state.alerts, catalog, settings, state.breaker)
        journal = Journal(settings.journal_dir, state.spend.leases.process, ledger_id)
        journal.open()
        state.availability = Availability(ledger.engine, settings.budget_refresh_s)
        await state.availability.refresh()
        challenger = None
        if settings.challenger_dir is not None:
            challenger = await asyncio.to_thread(LearnedRouter.load, settings.challenger_dir)
        state.gateway = Gateway(
            settings,
            catalog,
            router,
            build_providers(settings, client),
            metrics.upstream_error,
            state.spend,
            challenger,
            state.availability,
            journal,
        )
        state.experiments = ExperimentStore(ledger.engine, settings.budget_refresh_s)
        state.recorder = Recorder(ledger, metrics, state.spend, journal)
        default_threshold = settings.default_threshold or router.default_threshold
        state.pacer = Pacer(ledger.engine, state.budgets, default_threshold)
        served = [m for m in router.models if state.availability.unavailable(m) is None]
        reference = settings.reference_model or default_reference(catalog, served or router.models)
        state.analytics = Analytics(ledger.engine, catalog, reference)
        state.shutting_down = False
        state.key_rate_limit = (
            KeyRateLimit(settings.key_rate_per_minute) if settings.key_rate_per_minute else None
        )
        state.callers = CallerConcurrency(
            settings.max_concurrency_per_tenant, settings.max_concurrency_per_key
        )
        state.router_version = router.version
        upkeep = asyncio.create_task(maintain(state))
        revocations = asyncio.create_task(watch_revocations(ledger))
        background = [upkeep, revocations]
        if settings.upstream == "openrouter" and settings.openrouter_api_key:
            background.append(asyncio.create_task(refresh_listing(state)))
        local_id = await ledger.ensure_tenant(LOCAL_TENANT)
        admin_id = await ledger.ensure_tenant(ADMIN_TENANT)
        state.local_principal = Principal(local_id, LOCAL_TENANT, None)
        state.admin_principal = Principal(admin_id, ADMIN_TENANT, None, admin=True)
        # a routing decision is a few small matrix products: one math-library thread per
        # process (replicas scale by processes); a pool of them would spin beside the event
        # loop on every request and take the cores the other requests need
        threadpool_limits(1)
        # what start-up built (router, catalog, libraries) lives as long as the process: keep it
        # out of the garbage collector's full passes, which otherwise stall every request
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            state.shutting_down = True
            for task in background:
                task.cancel()
            await state.recorder.drain()
            if state.recorder.queue.empty():
                journal.close()  # every row is in the ledger; otherwise the next start replays
            await give_back_leases(state)
            await state.alerts.drain()
            await client.aclose()
            await ledger.close()

    app = FastAPI(title="switchboard", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    modules = (chat, passthrough, routing, records, budgets, analytics, experiments)
    for module in (*modules, dashboard, health):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with the schemas of the bodies the handlers parse themselves."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(BODY_SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return NotFound(f"no route {request.method} {request.url.path}").response()
        wrapped = InvalidRequest(str(error.detail))
        wrapped.status = error.status_code
        return wrapped.response()

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        name = str(first["loc"][-1]) if first.get("loc") else None
        return InvalidRequest(f"{name}: {first['msg']}", param=name).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return APIError("internal error; the request was not completed").response()

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyDeadline, timeout_s=settings.client_body_timeout_s)
    app.add_middleware(RejectUnstorableURLs)
    return app


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory`` (each worker builds its app from the environment)."""
    return create_app(Settings())
