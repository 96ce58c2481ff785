"""Auth and isolation across every route, keys stored only as hashes, provider keys and prompts
kept out of logs, errors and metrics, and per-key rate limits."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import sqlalchemy as sa

from service.config import to_sync_url
from service.providers.base import UpstreamError
from service.providers.openai_compat import openrouter
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, upstream_settings

ADMIN = "sb-admin-security"
UPSTREAM_KEY = "sk-or-very-secret-upstream-key"
MODEL = "openai/gpt-4o-mini"
SECRET_PROMPT = "my password is hunter2-do-not-log"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    database = f"sqlite:///{tmp_path_factory.mktemp('security') / 'ledger.db'}"
    upstream = FakeUpstreamServer(catalog_prices([MODEL])).start()
    settings = upstream_settings(
        upstream.url, database, ADMIN, openrouter_api_key=UPSTREAM_KEY, key_rate_per_minute=120
    )
    try:
        with ServiceServer(settings) as server:
            yield server, upstream
    finally:
        upstream.stop()


def call(service, method, path, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{service.url}{path}", headers=headers, timeout=10, **kwargs)


def test_every_route_refuses_other_tenants_admins_only_and_missing_keys(service):
    server, _ = service
    acme = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "acme"}).json()
    globex = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "globex"}).json()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    answer = call(server, "POST", "/v1/chat/completions", acme["key"], json=body)
    request_id = answer.headers["x-switchboard-request-id"]
    budget = call(
        server, "POST", "/v1/admin/budgets", ADMIN,
        json={"scope": "tenant:acme", "period": "day", "limit_usd": 5},
    ).json()  # fmt: skip
    # another tenant cannot see or touch acme's request, budget, analytics
    other = globex["key"]
    assert call(server, "GET", f"/v1/requests/{request_id}", other).status_code == 404
    assert request_id not in call(server, "GET", "/v1/requests", other).text
    rate = {"request_id": request_id, "score": 1}
    assert call(server, "POST", "/v1/feedback", other, json=rate).status_code == 404
    assert call(server, "GET", f"/v1/budgets/{budget['id']}", other).status_code == 404
    assert call(server, "GET", "/v1/analytics/summary?tenant=acme", other).status_code == 403
    # admin routes refuse tenant keys; every route but health refuses no key
    admin_routes = [
        ("POST", "/v1/admin/keys", {"tenant": "x"}),
        ("POST", "/v1/admin/budgets", {"scope": "global", "period": "day", "limit_usd": 1}),
        ("DELETE", f"/v1/admin/budgets/{budget['id']}", None),
        ("POST", "/v1/admin/experiments", {"name": "x", "arms": []}),
        ("POST", "/v1/admin/experiments/x/stop", None),
        ("GET", "/v1/admin/breakers", None),
        ("POST", "/v1/admin/breakers/reset", {"scope": "global"}),
    ]
    for method, path, payload in admin_routes:
        assert call(server, method, path, acme["key"], json=payload).status_code == 403, path
        assert call(server, method, path, None, json=payload).status_code == 401, path
    public = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
    app = server.server.config.loaded_app.app  # type: ignore[union-attr]
    for route in app.routes:
        path = getattr(route, "path", "")
        if path in public or path.startswith("/dashboard") or "{" in path:
            continue
        for method in getattr(route, "methods", set()) - {"HEAD", "OPTIONS"}:
            response = call(server, method, path, "sb-not-a-key", json={})
            assert response.status_code == 401, (method, path)


def test_keys_are_stored_only_as_hashes(service):
    server, _ = service
    created = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "hashed"}).json()
    engine = sa.create_engine(to_sync_url(server.settings.database_url))
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT key_hash, key_prefix FROM api_keys")).all()
    engine.dispose()
    assert all(created["key"] not in (h, p) and len(p) <= 10 for h, p in stored)
    assert any(len(h) == 64 for h, _ in stored)


def test_provider_keys_and_prompts_stay_out_of_logs_errors_and_metrics(service, caplog):
    server, upstream = service
    key = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "quiet"}).json()["key"]
    httpx.post(f"{upstream.control_url}/faults", json={"model": MODEL, "fault": "500", "times": -1})
    caplog.set_level(logging.DEBUG)
    body = {"model": MODEL, "messages": [{"role": "user", "content": SECRET_PROMPT}]}
    failed = call(server, "POST", "/v1/chat/completions", key, json=body)
    httpx.delete(f"{upstream.control_url}/faults")
    ok = call(server, "POST", "/v1/chat/completions", key, json=body)
    assert failed.status_code == 502 and ok.status_code == 200
    record = call(server, "GET", f"/v1/requests/{ok.headers['x-switchboard-request-id']}", key)
    metrics = call(server, "GET", "/metrics").text
    for text in (failed.text, ok.text, record.text, metrics, caplog.text):
        assert UPSTREAM_KEY not in text
    for text in (failed.text, record.text, metrics, caplog.text):
        assert SECRET_PROMPT not in text  # content is stored only when configured


def test_an_upstream_error_that_echoes_the_key_is_redacted():
    def echo(request: httpx.Request) -> httpx.Response:
        auth = request.headers["authorization"]
        return httpx.Response(401, json={"error": {"message": f"bad key {auth}"}})

    async def run() -> UpstreamError:
        async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
            provider = openrouter("https://x/api/v1", UPSTREAM_KEY, client, "u", "t")
            with pytest.raises(UpstreamError) as raised:
                await provider.complete(MODEL, {"messages": [{"role": "user", "content": "x"}]})
            return raised.value

    error = asyncio.run(run())
    assert UPSTREAM_KEY not in error.message and "[redacted]" in error.message


def test_each_key_has_a_rate_limit_with_retry_after(service):
    server, _ = service
    key = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "busy"}).json()["key"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    served = 0
    for _ in range(400):  # the bucket refills at 2 a second while these run
        limited = call(server, "POST", "/v1/chat/completions", key, json=body)
        if limited.status_code != 200:
            break
        served += 1
    assert served >= 120  # the burst allowance: a minute's worth
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "key_rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    other = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "calm"}).json()["key"]
    assert call(server, "POST", "/v1/chat/completions", other, json=body).status_code == 200


def test_a_flood_of_wrong_keys_does_not_grow_the_key_cache(tmp_path, monkeypatch):
    """Answers for wrong keys are cached too (no database trip per retry); the cache is bounded,
    so a client cycling through made-up keys cannot grow the service's memory."""
    from service import ledger as ledger_module
    from service.config import to_async_url
    from service.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    monkeypatch.setattr(ledger_module, "AUTH_CACHE_ENTRIES", 50)

    async def flood() -> tuple[int, bool]:
        ledger = ledger_module.Ledger.connect(to_async_url(url))
        try:
            key, _ = await ledger.create_key("acme")
            assert await ledger.authenticate(key) is not None
            for i in range(200):
                assert await ledger.authenticate(f"sb-made-up-{i}") is None
            return len(ledger._auth_cache), (await ledger.authenticate(key)) is not None
        finally:
            await ledger.close()

    size, still_known = asyncio.run(flood())
    assert size <= 50 and still_known
