"""A hard cap holds across two server processes sharing one database: 200 concurrent requests
against a budget that allows 50."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest
import sqlalchemy as sa

from service.budgets import BudgetStore
from service.catalog import Catalog
from service.config import to_async_url, to_sync_url
from service.ledger import Ledger
from service.migrate import upgrade
from service.tables import alerts, budget_reservations, requests, tenants
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from switchboard.service_process import ServiceProcess
from tests.servers import WebhookReceiver

pytestmark = pytest.mark.slow
MODEL = "openai/gpt-4o-mini"
WORDS = "a " * 40  # 40 prompt tokens at the fake upstream; its answer is 41 tokens
REQUESTS, ALLOWED = 200, 50


def per_call_cost() -> float:
    info = Catalog.load().get(MODEL)
    assert info.prompt_usd_per_token and info.completion_usd_per_token
    return 40 * info.prompt_usd_per_token + 41 * info.completion_usd_per_token


async def prepare(
    database_url: str, tenant: str, limit_usd: float, webhook: str
) -> tuple[str, int]:
    ledger = Ledger.connect(to_async_url(database_url))
    try:
        key, _ = await ledger.create_key(tenant)
        store = BudgetStore(ledger.engine)
        budget = await store.put(f"tenant:{tenant}", "total", limit_usd, webhook_url=webhook)
        return key, budget.id
    finally:
        await ledger.close()


# the upstream honours max_tokens: a hold sized from the smaller max_completion_tokens would let
# every call spend more than it held
LIMITS = {
    "one limit": {"max_tokens": 41},
    "two limits": {"max_completion_tokens": 1, "max_tokens": 400},
}


async def flood(urls: list[str], key: str, limits: dict[str, int]) -> list[int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": WORDS}], **limits}
    limits = httpx.Limits(max_connections=REQUESTS)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(i: int) -> int:
            response = await client.post(
                f"{urls[i % len(urls)]}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            )
            if response.status_code == 402:
                assert response.json()["error"]["code"] == "budget_exceeded"
            return response.status_code

        return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
def test_two_processes_never_spend_past_a_hard_cap_and_alert_once(database_url, tmp_path, limits):
    upgrade(database_url)
    limit = ALLOWED * per_call_cost()
    with WebhookReceiver() as hook, FakeUpstreamServer(catalog_prices([MODEL])) as upstream:
        tenant = "shared-" + "-".join(map(str, limits.values()))
        key, budget_id = asyncio.run(prepare(database_url, tenant, limit, hook.url))
        # each answer takes 50 ms upstream, so requests overlap in both processes
        rule = {"model": "*", "fault": "none", "latency_ms": 50, "times": -1}
        httpx.post(f"{upstream.control_url}/faults", json=rule).raise_for_status()
        env: dict[str, str | None] = {
            "SWITCHBOARD_DATABASE_URL": database_url,
            "SWITCHBOARD_OPENROUTER_BASE_URL": upstream.url,
            "OPENROUTER_API_KEY": "upstream-key",
            "SWITCHBOARD_UPSTREAM": "openrouter",
            "SWITCHBOARD_BUDGET_REFRESH_S": "0",
            "SWITCHBOARD_ALLOW_PRIVATE_WEBHOOKS": "true",
            # the whole flood in flight at once: the budget, not the tenant's concurrency
            # limit, is what refuses
            "SWITCHBOARD_MAX_CONCURRENCY_PER_TENANT": str(REQUESTS),
        }
        replicas = [ServiceProcess(env, log_path=tmp_path / f"replica{i}.log") for i in (1, 2)]
        for replica in replicas:
            replica.launch()
        try:
            for replica in replicas:
                replica.wait_ready()
            statuses = asyncio.run(flood([r.url for r in replicas], key, limits))
        finally:
            for replica in replicas:
                replica.stop()  # graceful: pending alert deliveries finish first
        bodies = [json.loads(body) for _, body in hook.received]
        posted = sorted(b["threshold"] for b in bodies if b["type"] == "budget_threshold")
    served = statuses.count(200)
    assert set(statuses) <= {200, 402} and 0 < served <= ALLOWED
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.connect() as conn:
        tenant_id = sa.select(tenants.c.id).where(tenants.c.name == tenant).scalar_subquery()
        rows = conn.execute(
            sa.select(requests.c.http_status, requests.c.cost_usd).where(
                requests.c.tenant_id == tenant_id
            )
        ).all()
        window = conn.execute(
            sa.text("SELECT spent_usd, reserved_usd FROM budget_windows WHERE budget_id = :b"),
            {"b": budget_id},
        ).one()
        holds = conn.scalar(
            sa.select(sa.func.count()).where(budget_reservations.c.budget_id == budget_id)
        )
        alerted = conn.execute(
            sa.select(alerts.c.dedupe_key).where(alerts.c.budget_id == budget_id)
        ).all()
    engine.dispose()
    assert len(rows) == REQUESTS  # every request has its row, served or refused
    assert sorted(status for status, _ in rows) == sorted(statuses)
    ledger_total = sum(cost for status, cost in rows if status == 200)
    assert window.spent_usd <= limit * (1 + 1e-9)
    assert window.spent_usd == pytest.approx(ledger_total, rel=1e-9)
    assert ledger_total == pytest.approx(served * per_call_cost(), rel=1e-6)
    assert window.reserved_usd == pytest.approx(0, abs=1e-12) and holds == 0
    # thresholds crossed by two processes at once: each alerted exactly once, and the refusals
    # (not spend) as one notice
    crossed = sorted(t for t in (0.5, 0.8, 1.0) if window.spent_usd >= t * limit * (1 - 1e-9))
    assert len([k for (k,) in alerted if k.startswith("budget:")]) == len(crossed)
    assert posted == crossed
    assert len([k for (k,) in alerted if k.startswith("refused:")]) == (served < REQUESTS)
    print(f"\n{os.path.basename(database_url)}: {served} served, {REQUESTS - served} refused")
