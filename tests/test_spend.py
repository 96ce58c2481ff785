"""Spend through the running service: hard caps (402), alerts once per crossing by webhook and
email, unpriced models, cost accuracy against the upstream's bill, reconcile, models sync, and
the budget CLI."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import openai
import pytest
from openai import OpenAI

from service.catalog import Catalog, ModelInfo
from service.config import to_async_url
from service.ledger import Ledger, now
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, WebhookReceiver, smtp_server, upstream_settings

ADMIN = "sb-admin-spend-test"
SECRET = "whsec-test"
MODEL = "openai/gpt-4o-mini"
DEAR = "openai/gpt-4o"
UNPRICED = "example/unpriced-model"  # in the service's catalog without a price
PROMPT = "Name three primary colours please"
WORDS = "a " * 40  # 40 prompt tokens for the fake upstream, whose answer echoes 41 words


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstreamServer(catalog_prices([MODEL, DEAR])) as server:
        yield server


@pytest.fixture(scope="module")
def mail(database_url, tmp_path_factory):  # one per database: alerts are counted per backend
    with smtp_server(tmp_path_factory.mktemp("smtp"), "alerts", "s3cret") as found:
        yield found


@pytest.fixture(scope="module")
def hook(database_url):
    with WebhookReceiver(fail_first=1) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def service(upstream, database_url, mail, tmp_path_factory):
    port, ca_file, _ = mail
    catalog = Catalog.load()
    catalog.models[UNPRICED] = ModelInfo(UNPRICED, UNPRICED, None, None)
    catalog_path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    catalog.save(catalog_path)
    settings = upstream_settings(
        upstream.url,
        database_url,
        ADMIN,
        catalog_path=catalog_path,
        budget_refresh_s=0,
        webhook_secret=SECRET,
        allow_private_webhooks=True,
        alert_backoff_s=0.01,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_username="alerts",
        smtp_password="s3cret",
        smtp_ca_file=ca_file,
        backoff_base_s=0.01,
        upkeep_interval_s=0.2,  # idle budget leases go back within two intervals
    )
    with ServiceServer(settings) as server:
        yield server


def admin(service, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.request(method, f"{service.url}{path}", headers=headers, **kwargs)


def set_budget(service, **fields):
    response = admin(service, "POST", "/v1/admin/budgets", json=fields)
    assert response.status_code == 200, response.text
    return response.json()


def ask(client, model=MODEL, content=PROMPT, **options):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **options
    )
    return raw.parse(), raw.headers


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def given_back(service, budget_id):
    """The budget's status once the service's idle lease has given its room back (upkeep), so
    that nothing stays reserved: no hold leaked."""
    status = {}

    def nothing_reserved():
        status.update(admin(service, "GET", f"/v1/budgets/{budget_id}").json())
        return status["reserved_usd"] == pytest.approx(0, abs=1e-12)

    wait_for(nothing_reserved)
    return status


def test_a_hard_cap_refuses_with_402_and_alerts_once_by_webhook_and_email(
    service, hook, mail, upstream
):
    created = admin(service, "POST", "/v1/admin/keys", json={"tenant": "capped"}).json()
    client = OpenAI(base_url=f"{service.url}/v1", api_key=created["key"], max_retries=0)
    first, _ = ask(client, content=WORDS, max_tokens=41)
    per_call = first.usage.cost
    budget = set_budget(
        service,
        scope="tenant:capped",
        period="day",
        limit_usd=per_call * 4.8,  # room for four answers of this size and their holds
        webhook_url=hook.url,
        email="ops@example.com",
    )
    assert budget["spent_usd"] == 0 and budget["resets_at"]
    served, refused = 0, None
    for _ in range(10):
        try:
            ask(client, content=WORDS, max_tokens=41)
            served += 1
        except openai.APIStatusError as error:
            refused = error
            break
    assert refused is not None and refused.status_code == 402
    body = refused.response.json()["error"]
    assert body["code"] == "budget_exceeded" and "tenant:capped" in body["message"]
    assert refused.response.headers["x-switchboard-budget-scope"] == "tenant:capped"
    assert served == 4  # each hold is about 1.6 answers (the prompt bound counts body bytes)
    status = given_back(service, budget["id"])
    assert status["spent_usd"] <= status["limit_usd"]
    assert status["spent_usd"] == pytest.approx(served * per_call)
    ledger = httpx.get(
        f"{service.url}/v1/requests",
        params={"status": "error"},
        headers={"Authorization": f"Bearer {created['key']}"},
    ).json()["data"]
    assert ledger[0]["http_status"] == 402 and ledger[0]["error_code"] == "budget_exceeded"
    # 50 % and 80 % alert once each, and the refused request once as a notice (it is not
    # spend: the 100 % alert waits for spend to reach 100 %): by webhook (signed, after one
    # failed try) and mail
    wait_for(lambda: len(hook.received) >= 3)
    time.sleep(0.3)
    bodies = [json.loads(raw) for _, raw in hook.received]
    assert sorted(b["threshold"] for b in bodies if b["type"] == "budget_threshold") == [0.5, 0.8]
    (notice,) = [b for b in bodies if b["type"] == "budget_refused"]
    assert notice["refused_request_usd"] > notice["limit_usd"] - notice["spent_usd"] - 1e-12
    for headers, raw in hook.received:
        stamp, signature = (
            part.split("=", 1)[1] for part in headers["x-switchboard-signature"].split(",")
        )
        expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256)
        assert signature == expected.hexdigest()
    _, _, received = mail
    wait_for(lambda: len(received) >= 3)
    assert all(envelope.rcpt_tos == ["ops@example.com"] for envelope in received)
    alerts = admin(service, "GET", "/v1/alerts").json()["data"]
    mine = [a for a in alerts if a["budget_id"] == budget["id"]]
    assert len(mine) == 3
    wait_for(
        lambda: all(
            a["webhook_status"] and a["email_status"]
            for a in admin(service, "GET", "/v1/alerts").json()["data"]
            if a["budget_id"] == budget["id"]
        )
    )
    final = [
        a
        for a in admin(service, "GET", "/v1/alerts").json()["data"]
        if a["budget_id"] == budget["id"]
    ]
    assert all(a["email_status"].startswith("sent") for a in final)
    assert all(a["webhook_status"].startswith("sent") for a in final)
    # a tenant sees its own budget and alerts, not another tenant's
    tenant = {"Authorization": f"Bearer {created['key']}"}
    assert [
        b["id"] for b in httpx.get(f"{service.url}/v1/budgets", headers=tenant).json()["data"]
    ] == [budget["id"]]
    other = admin(service, "POST", "/v1/admin/keys", json={"tenant": "other"}).json()["key"]
    other_auth = {"Authorization": f"Bearer {other}"}
    assert (
        httpx.get(f"{service.url}/v1/budgets/{budget['id']}", headers=other_auth).status_code == 404
    )
    assert httpx.get(f"{service.url}/v1/alerts", headers=other_auth).json()["data"] == []


def test_budget_admin_routes_check_their_input(service):
    key = admin(service, "POST", "/v1/admin/keys", json={"tenant": "t"}).json()["key"]
    refused = httpx.post(
        f"{service.url}/v1/admin/budgets",
        json={"scope": "global", "period": "day", "limit_usd": 1},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert refused.status_code == 403
    for fields in (
        {"scope": "team:x", "period": "day", "limit_usd": 1},
        {"scope": "global", "period": "year", "limit_usd": 1},
        {"scope": "global", "period": "day", "limit_usd": -1},
        {"scope": "global", "period": "day", "limit_usd": "lots"},
    ):
        response = admin(service, "POST", "/v1/admin/budgets", json=fields)
        assert response.status_code == 400, fields
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert admin(service, "DELETE", "/v1/admin/budgets/999999").status_code == 404


def test_unpriced_models_under_a_budget_are_blocked_by_default(service):
    # an upstream that reports no cost (as direct provider APIs do): the catalog has no price
    with FakeUpstreamServer(None) as plain:
        settings = service.settings.model_copy(update={"openrouter_base_url": plain.url})
        with ServiceServer(settings) as other:
            created = admin(other, "POST", "/v1/admin/keys", json={"tenant": "unpriced"}).json()
            client = OpenAI(base_url=f"{other.url}/v1", api_key=created["key"], max_retries=0)
            completion, headers = ask(client, model=UNPRICED)  # no budget: served, warned
            assert completion.usage.model_extra.get("cost") is None
            assert "no price" in headers["x-switchboard-warning"]
            set_budget(other, scope=f"key:{created['id']}", period="total", limit_usd=1.0)
            with pytest.raises(openai.APIStatusError) as refused:
                ask(client, model=UNPRICED)
            assert refused.value.status_code == 402
            assert refused.value.response.json()["error"]["code"] == "unpriced_model"
            completion, _ = ask(client, model=MODEL)  # priced models still pass
            assert completion.usage.cost > 0


def test_charges_no_token_price_bounds_are_refused_under_a_budget(service):
    created = admin(service, "POST", "/v1/admin/keys", json={"tenant": "searcher"}).json()
    client = OpenAI(base_url=f"{service.url}/v1", api_key=created["key"], max_retries=0)
    web = {"plugins": [{"id": "web", "max_results": 5}]}
    completion, _ = ask(client, extra_body=web)  # no budget applies: forwarded as sent
    assert completion.choices[0].message.content
    set_budget(service, scope=f"key:{created['id']}", period="total", limit_usd=1.0)
    for extra in (web, {"web_search_options": {"search_context_size": "high"}}):
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, extra_body=extra)
        error = refused.value.response.json()["error"]
        assert error["code"] == "unbounded_cost" and error["param"] == next(iter(extra))
    completion, _ = ask(client)
    assert completion.usage.cost > 0


def test_the_ledger_matches_the_upstreams_bill_streamed_or_not(service, upstream):
    created = admin(service, "POST", "/v1/admin/keys", json={"tenant": "billing"}).json()
    key = created["key"]
    set_budget(service, scope="tenant:billing", period="month", limit_usd=100.0)
    httpx.delete(f"{upstream.control_url}/requests")

    async def traffic():
        client = openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0)

        async def one(i: int) -> None:
            model = (MODEL, DEAR)[i % 2]
            messages = [{"role": "user", "content": f"{PROMPT} number {i} " + "word " * (i % 7)}]
            if i % 3 == 0:
                stream = await client.chat.completions.create(
                    model=model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for _ in stream:
                    pass
            elif i % 3 == 1:
                stream = await client.chat.completions.create(
                    model=model, messages=messages, stream=True
                )
                async for _ in stream:
                    pass
            else:
                await client.chat.completions.create(model=model, messages=messages)

        await asyncio.gather(*(one(i) for i in range(30)))
        await client.close()

    asyncio.run(traffic())
    httpx.post(
        f"{upstream.control_url}/faults", json={"model": MODEL, "fault": "cut_stream", "times": 2}
    )
    for _ in range(2):  # streams cut after the first tokens: still billed, still recorded
        with httpx.stream(
            "POST",
            f"{service.url}/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": True,
            },
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            list(response.iter_lines())
    billed = sum(r["billed_usd"] or 0 for r in httpx.get(f"{upstream.control_url}/requests").json())
    rows = httpx.get(
        f"{service.url}/v1/requests",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    assert rows["summary"]["requests"] == 32
    recorded = rows["summary"]["cost_usd"]
    assert abs(recorded - billed) < 0.01  # to the cent
    assert sum(r["charged_usd"] or 0 for r in rows["data"]) == pytest.approx(recorded)
    assert all(r["cost_usd"] > 0 for r in rows["data"])  # no stream recorded at $0
    budget = next(
        b
        for b in admin(service, "GET", "/v1/budgets").json()["data"]
        if b["scope"] == "tenant:billing"
    )
    assert given_back(service, budget["id"])["spent_usd"] == pytest.approx(recorded)

    async def mismatches():
        ledger = Ledger.connect(to_async_url(service.settings.database_url))
        try:
            return await ledger.cost_mismatches(now() - timedelta(hours=1), 0.01)
        finally:
            await ledger.close()

    assert asyncio.run(mismatches()) == []  # upstream's usage.cost agrees with the catalog


def test_reconcile_lists_requests_the_upstream_billed_differently(service, tmp_path):
    with FakeUpstreamServer({MODEL: (1e-5, 1e-5)}) as dear_upstream:  # not the catalog's price
        settings = service.settings.model_copy(update={"openrouter_base_url": dear_upstream.url})
        with ServiceServer(settings) as other:
            key = admin(other, "POST", "/v1/admin/keys", json={"tenant": "recon"}).json()["key"]
            client = OpenAI(base_url=f"{other.url}/v1", api_key=key, max_retries=0)
            completion, _ = ask(client)
    env = {"SWITCHBOARD_DATABASE_URL": service.settings.database_url}
    result = subprocess.run(
        [sys.executable, "-m", "switchboard", "reconcile", "--days", "1", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    listed = json.loads(result.stdout)
    assert completion.id in [row["id"] for row in listed]


def test_models_sync_refreshes_prices_from_the_upstream(tmp_path, upstream):
    catalog_path = tmp_path / "catalog.json"
    catalog = Catalog.load()
    old = catalog.get(MODEL)
    catalog.models[MODEL] = old.__class__(MODEL, old.name, 1.0, 1.0, price_seen_at="2024-01-01")
    catalog.save(catalog_path)
    env = {
        **os.environ,
        "SWITCHBOARD_CATALOG_PATH": str(catalog_path),
        "SWITCHBOARD_OPENROUTER_BASE_URL": upstream.url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "switchboard", "models", "sync"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert f"repriced {MODEL}" in result.stdout
    synced = Catalog.load(catalog_path).get(MODEL)
    assert synced.prompt_usd_per_token == old.prompt_usd_per_token
    assert synced.price_seen_at > "2026"
    assert len(Catalog.load(catalog_path).ids()) == len(catalog.ids())  # nothing lost


def cli(database_url, *args):
    env = {**os.environ, "SWITCHBOARD_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args], capture_output=True, text=True, env=env
    )


def test_the_budget_cli_sets_and_shows_budgets(service):
    url = service.settings.database_url
    made = cli(
        url,
        "budget",
        "set",
        "--scope",
        "tenant:cli",
        "--period",
        "week",
        "--limit-usd",
        "2.5",
        "--alert-at",
        "0.5,0.9",
    )
    assert made.returncode == 0, made.stderr
    shown = cli(url, "budget", "show", "--scope", "tenant:cli", "--json")
    status = json.loads(shown.stdout)
    assert {"limit_usd", "spent_usd", "reserved_usd", "period", "resets_at"} <= set(status)
    assert (status["limit_usd"], status["period"], status["spent_usd"]) == (2.5, "week", 0.0)
    assert status["alert_at"] == [0.5, 0.9] and status["resets_at"].endswith("+00:00")
    listed = admin(service, "GET", "/v1/budgets").json()["data"]  # the service sees it too
    assert any(b["scope"] == "tenant:cli" and b["limit_usd"] == 2.5 for b in listed)
    for bad in (
        ("budget", "set", "--scope", "team:x", "--period", "day", "--limit-usd", "1"),
        ("budget", "set", "--scope", "global", "--period", "year", "--limit-usd", "1"),
        (
            "budget",
            "set",
            "--scope",
            "global",
            "--period",
            "day",
            "--limit-usd",
            "1",
            "--webhook",
            "http://127.0.0.1/x",
        ),
        ("budget", "show", "--scope", "tenant:nobody"),
    ):
        result = cli(url, *bad)
        assert result.returncode == 2 and result.stderr.startswith("error:"), bad
        assert "Traceback" not in result.stderr


def test_a_request_too_large_for_the_whole_budget_alerts_no_threshold(service, hook):
    """Refused holds are not spend: one far over the limit leaves the 100 % alert for when the
    budget really runs out, and sends one notice an hour at most."""
    created = admin(service, "POST", "/v1/admin/keys", json={"tenant": "huge"}).json()
    client = OpenAI(base_url=f"{service.url}/v1", api_key=created["key"], max_retries=0)
    budget = set_budget(
        service, scope="tenant:huge", period="day", limit_usd=0.02, webhook_url=hook.url
    )
    for max_tokens in (10**9, 10**30):
        with pytest.raises(openai.APIStatusError) as refused:
            ask(client, max_tokens=max_tokens)
        assert refused.value.status_code == 402
    time.sleep(0.5)
    mine = [
        a
        for a in admin(service, "GET", "/v1/alerts").json()["data"]
        if a["budget_id"] == budget["id"]
    ]
    assert [a["kind"] for a in mine] == ["budget_refused"]
    assert "refused a request" in mine[0]["message"] and "exhausted" not in mine[0]["message"]
