"""Spend controls that steer routing in the running service: soft landing, pacing, and the
spend-spike breaker (trip from ledger history, refuse, alert once, reset)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from service.alerts import Alerts
from service.budgets import BudgetStore
from service.config import Settings, to_async_url
from service.ledger import Ledger, now
from service.pacing import Pacer
from service.spend_breaker import SpendBreaker
from service.tables import requests, tenants
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, WebhookReceiver, upstream_settings

ADMIN = "sb-admin-steering"
PROMPT = "Write a haiku about budgets"


@pytest.fixture(scope="module")
def hook(database_url):
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def service(database_url, hook):
    router_models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
    with FakeUpstreamServer(catalog_prices(router_models)) as upstream:
        settings = upstream_settings(
            upstream.url,
            database_url,
            ADMIN,
            budget_refresh_s=0,
            allow_private_webhooks=True,
            alert_webhook_url=hook.url,
            spike_multiple=2.0,
            spike_min_usd=0.01,
            spike_window_s=300,
            spike_baseline_s=3600,
        )
        with ServiceServer(settings) as server:
            yield server


def admin(service, method, path, **kwargs):
    return httpx.request(
        method, f"{service.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs
    )


def tenant_client(service, name):
    created = admin(service, "POST", "/v1/admin/keys", json={"tenant": name}).json()
    return OpenAI(base_url=f"{service.url}/v1", api_key=created["key"], max_retries=0)


def ask(client, model="switchboard/auto", content=PROMPT, **options):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **options
    )
    return raw.parse(), raw.headers


def record_of(service, client, request_id):
    return httpx.get(
        f"{service.url}/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {client.api_key}"},
    ).json()


def test_a_budget_running_low_lands_softly_on_cheaper_models(service):
    client = tenant_client(service, "lander")
    first, normal = ask(client, extra_headers={"x-switchboard-quality-threshold": "0.9"})
    assert "x-switchboard-spend-control" not in normal
    full = record_of(service, client, first.id)["candidates"]
    budget = admin(
        service,
        "POST",
        "/v1/admin/budgets",
        json={
            "scope": "tenant:lander",
            "period": "month",
            "limit_usd": 0.01,
            "soft_landing_at": 0.999,  # below it after the first spend
            "soft_threshold": 0.3,
        },
    ).json()
    assert budget["soft_landing_at"] == 0.999
    ask(client, model="openai/gpt-4-1106-preview", max_tokens=20)  # spends over 0.1 % of it
    completion, headers = ask(
        client, max_tokens=20, extra_headers={"x-switchboard-quality-threshold": "0.9"}
    )
    assert headers["x-switchboard-spend-control"] == "soft_landing tenant:lander"
    assert float(headers["x-switchboard-threshold"]) == pytest.approx(0.3)
    record = record_of(service, client, completion.id)
    assert record["spend_control"] == "soft_landing tenant:lander"
    median = float(np.median([c["expected_cost_usd"] for c in full]))
    kept = [c["expected_cost_usd"] for c in record["candidates"]]
    assert len(kept) < len(full) and max(kept) <= median


def test_a_paced_budget_caps_the_threshold_with_the_controllers_state(service):
    client = tenant_client(service, "paced")
    hard = "Prove that there are infinitely many primes."  # the default is not the cheapest
    for _ in range(5):  # some history for the controller
        ask(client, content=hard)

    def set_limit(limit_usd):
        admin(
            service,
            "POST",
            "/v1/admin/budgets",
            json={"scope": "tenant:paced", "period": "day", "limit_usd": limit_usd, "pacing": True},
        ).raise_for_status()

    async def update():
        ledger = Ledger.connect(to_async_url(service.settings.database_url))
        try:
            store = BudgetStore(ledger.engine, refresh_s=0)
            await Pacer(ledger.engine, store, 0.69).update_all()
            return next(b.pacing_state for b in await store.all() if b.scope == "tenant:paced")
        finally:
            await ledger.close()

    set_limit(1.0)
    admin(service, "GET", "/v1/requests")  # the ledger is written off the response path
    ample = asyncio.run(update())
    assert ample["status"] == "on_track" and ample["threshold"] is None
    assert ample["history_requests"] == 5 and ample["forecast_requests"] > 0
    floor, default = ample["projected_at_floor_usd"], ample["projected_at_default_usd"]
    assert floor < default
    limit = (floor + default) / 2  # more than the cheapest pace, less than the default one
    set_limit(limit)
    state = asyncio.run(update())
    assert state["status"] == "paced" and state["threshold"] < 0.69
    assert state["projected_spend_usd"] <= limit
    listed = admin(service, "GET", "/v1/budgets").json()["data"]
    shown = next(b for b in listed if b["scope"] == "tenant:paced")
    assert shown["pacing_state"]["threshold"] == state["threshold"]
    _, headers = ask(client, content=hard, max_tokens=5)
    assert float(headers["x-switchboard-threshold"]) == pytest.approx(state["threshold"])
    assert headers["x-switchboard-spend-control"] == "pacing tenant:paced"


def _seed_history(database_url):
    """A steady tenant spending $1 per 5 minutes for an hour, and a spiky one that spent
    $0.001 per 5 minutes, then $0.5 in the last 5."""

    async def seed():
        ledger = Ledger.connect(to_async_url(database_url))
        try:
            ids = {name: await ledger.ensure_tenant(name) for name in ("calm", "spiky")}
            at = now()
            rows = []
            for i in range(13):
                when = at - timedelta(minutes=5 * i + 1)
                for name, cost in (("calm", 1.0), ("spiky", 0.5 if i == 0 else 0.001)):
                    rows.append(
                        {
                            "id": f"seed-{name}-{i}",
                            "created_at": when,
                            "tenant_id": ids[name],
                            "endpoint": "chat.completions",
                            "status": "ok",
                            "http_status": 200,
                            "attempts": 1,
                            "stream": False,
                            "latency_ms": 1.0,
                            "cost_usd": cost,
                        }
                    )
            async with ledger.engine.begin() as conn:
                await conn.execute(requests.insert(), rows)
                assert await conn.scalar(tenants.select().with_only_columns(tenants.c.id).limit(1))
        finally:
            await ledger.close()

    asyncio.run(seed())


def test_a_spend_spike_trips_the_tenants_breaker_alerts_once_and_resets(service, hook):
    _seed_history(service.settings.database_url)

    async def check_twice():  # as any replica's upkeep does
        ledger = Ledger.connect(to_async_url(service.settings.database_url))
        async with httpx.AsyncClient() as client:
            alerts = Alerts(ledger.engine, service.settings, client)
            breaker = SpendBreaker(ledger.engine, service.settings, alerts)
            tripped = [await breaker.check(), await breaker.check()]
            await alerts.drain()
        await ledger.close()
        return tripped

    first, second = asyncio.run(check_twice())
    assert first == ["tenant:spiky"]
    assert second == []  # already open: not tripped (or alerted) twice
    spiky, calm = tenant_client(service, "spiky"), tenant_client(service, "calm")
    for model in ("switchboard/auto", "openai/gpt-4o-mini"):
        with pytest.raises(openai.APIStatusError) as refused:
            ask(spiky, model=model)
        assert refused.value.status_code == 402
        assert refused.value.response.json()["error"]["code"] == "spend_spike"
    ask(calm)  # other tenants are not affected
    open_now = admin(service, "GET", "/v1/admin/breakers").json()["data"]
    assert [b["scope"] for b in open_now] == ["tenant:spiky"]
    alerts = [
        a for a in admin(service, "GET", "/v1/alerts").json()["data"] if a["kind"] == "spend_spike"
    ]
    assert len(alerts) == 1 and alerts[0]["scope"] == "tenant:spiky"
    assert [json.loads(body)["type"] for _, body in hook.received] == ["spend_spike"]
    env = {"SWITCHBOARD_DATABASE_URL": service.settings.database_url}
    reset = subprocess.run(
        [sys.executable, "-m", "switchboard", "breaker", "reset", "--scope", "tenant:spiky"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert reset.returncode == 0, reset.stderr
    ask(spiky)  # served again
    assert (
        admin(
            service, "POST", "/v1/admin/breakers/reset", json={"scope": "tenant:spiky"}
        ).status_code
        == 404
    )
