"""Auth and isolation across every route, keys stored only as hashes, provider keys and prompts
kept out of logs, errors and metrics, and per-key rate limits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

import httpx
import pytest
import sqlalchemy as sa

from service.config import to_sync_url
from service.providers.base import UpstreamError
from service.providers.openai_compat import openrouter
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from switchboard.service_process import ServiceProcess, upstream_env
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


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_echoes_the_key_never_gets_it_to_the_tenant(service, caplog, stream):
    """Bodies and stream events alike (the streamed one splits the key across two writes)."""
    server, upstream = service
    key = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "echoed"}).json()["key"]
    httpx.post(
        f"{upstream.control_url}/faults", json={"model": MODEL, "fault": "echo_key", "times": -1}
    )
    caplog.set_level(logging.DEBUG)
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    try:
        answer = call(server, "POST", "/v1/chat/completions", key, json=body)
    finally:
        httpx.delete(f"{upstream.control_url}/faults")
    echoed = [e for e in upstream.state.requests if e["fault"] == "echo_key"]
    assert echoed, "the fault did not fire"
    assert "[redacted]" in answer.text
    record = call(server, "GET", f"/v1/requests/{answer.headers['x-switchboard-request-id']}", key)
    listed = call(server, "GET", "/v1/requests", key)
    assert "[redacted]" in record.json()["error_message"]
    for text in (answer.text, str(answer.headers), record.text, listed.text, caplog.text):
        assert UPSTREAM_KEY not in text


def test_a_key_split_across_two_network_reads_is_redacted():
    """The SSE event is reassembled before redaction, whichever bytes each read brought."""
    from service.providers.redaction import redacting

    event = f'data: {{"error": {{"message": "bad key Bearer {UPSTREAM_KEY}"}}}}\n\n'.encode()
    first = b'data: {"id":"g","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    split = event.index(UPSTREAM_KEY.encode()) + 5

    async def pieces():
        for piece in (first, event[:split], event[split:]):
            yield piece

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=pieces())

    async def run() -> tuple[list[bytes], UpstreamError]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
            raw = openrouter("https://x/api/v1", UPSTREAM_KEY, client, "u", "t")
            (provider,) = redacting([raw], [UPSTREAM_KEY])
            chunks = []
            with pytest.raises(UpstreamError) as raised:
                async for chunk in provider.stream(MODEL, {"messages": []}):
                    chunks.append(chunk.data)
            return chunks, raised.value

    chunks, error = asyncio.run(run())
    assert chunks == [first[6:-2]]
    assert UPSTREAM_KEY not in error.message and "[redacted]" in error.message


@pytest.mark.parametrize("adapter", ["openrouter", "anthropic", "gemini"])
@pytest.mark.parametrize("streamed", [False, True])
def test_every_adapter_s_errors_reach_the_gateway_redacted(adapter, streamed):
    from service.providers.anthropic import AnthropicProvider
    from service.providers.gemini import GeminiProvider
    from service.providers.redaction import redacting

    def echo(request: httpx.Request) -> httpx.Response:
        sent = " ".join(request.headers.get(h, "") for h in ("authorization", "x-api-key"))
        sent += request.headers.get("x-goog-api-key", "")
        return httpx.Response(401, json={"error": {"message": f"bad key {sent}"}})

    async def run() -> UpstreamError:
        async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
            raw = {
                "openrouter": lambda: openrouter(
                    "https://x/api/v1", UPSTREAM_KEY, client, "u", "t"
                ),
                "anthropic": lambda: AnthropicProvider(UPSTREAM_KEY, client, "https://x"),
                "gemini": lambda: GeminiProvider(UPSTREAM_KEY, client, "https://x"),
            }[adapter]()
            (provider,) = redacting([raw], [UPSTREAM_KEY])
            body = {"messages": [{"role": "user", "content": "x"}]}
            model = {"anthropic": "anthropic/claude-3-haiku", "gemini": "google/gemini-2.5-flash"}
            with pytest.raises(UpstreamError) as raised:
                if streamed:
                    async for _ in provider.stream(model.get(adapter, MODEL), body):
                        pass
                else:
                    await provider.complete(model.get(adapter, MODEL), body)
            return raised.value

    error = asyncio.run(run())
    assert UPSTREAM_KEY not in error.message and "[redacted]" in error.message
    assert UPSTREAM_KEY not in str(error)


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


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_revoked_key_is_refused_within_two_seconds_on_every_replica(database_url, tmp_path):
    env = {"SWITCHBOARD_DATABASE_URL": database_url, "SWITCHBOARD_ADMIN_KEY": ADMIN}
    created = [_cli(env, "keys", "create", "--tenant", f"leaver-{i}") for i in (1, 2)]
    assert all(c.returncode == 0 for c in created), [c.stderr for c in created]
    keys = [c.stdout.strip().splitlines()[-1] for c in created]
    listed = json.loads(_cli(env, "keys", "list", "--json").stdout)
    ids = {row["tenant"]: row["id"] for row in listed}
    assert all(row["revoked_at"] is None and keys[0] not in json.dumps(row) for row in listed)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with FakeUpstreamServer(catalog_prices([MODEL])) as upstream:
        service_env = upstream_env(database_url, upstream.url, admin_key=ADMIN)
        replicas = [ServiceProcess(service_env, log_path=tmp_path / f"r{i}.log") for i in (1, 2)]
        for replica in replicas:
            replica.launch()
        try:
            for replica in replicas:
                replica.wait_ready()
            for replica in replicas:  # both keys work and sit in both replicas' caches
                for key in keys:
                    assert call(replica, "POST", "/v1/chat/completions", key, json=body).is_success

            def refused_everywhere(key: str) -> float:
                started = time.monotonic()
                while time.monotonic() - started < 10:
                    statuses = [
                        call(r, "POST", "/v1/chat/completions", key, json=body).status_code
                        for r in replicas
                    ]
                    if statuses == [401, 401]:
                        return time.monotonic() - started
                    time.sleep(0.05)
                raise AssertionError("the revoked key still works")

            revoked = _cli(env, "keys", "revoke", keys[0])  # by the key itself, in the ledger
            assert revoked.returncode == 0, revoked.stderr
            assert refused_everywhere(keys[0]) <= 2.0
            by_api = call(replicas[0], "POST", f"/v1/admin/keys/{ids['leaver-2']}/revoke", ADMIN)
            assert by_api.status_code == 200 and by_api.json()["revoked_at"]
            assert refused_everywhere(keys[1]) <= 2.0
            admin_list = call(replicas[1], "GET", "/v1/admin/keys", ADMIN).json()["data"]
            assert all(
                row["revoked_at"] for row in admin_list if row["tenant"].startswith("leaver")
            )
            assert (
                call(replicas[1], "POST", "/v1/admin/keys/999999/revoke", ADMIN).status_code == 404
            )
            assert call(replicas[1], "GET", "/v1/admin/keys", keys[1]).status_code == 401
        finally:
            for replica in replicas:
                replica.stop()
    assert _cli(env, "keys", "revoke", "sb-not-a-key").returncode == 2
    assert _cli(env, "keys", "revoke", str(ids["leaver-1"])).returncode == 0  # again: no change


@pytest.mark.parametrize("name", ["", "   ", "line\\nbreak", "tab\\there", "x" * 201])
def test_tenant_names_that_would_break_headers_are_refused(service, name):
    server, _ = service
    name = name.encode().decode("unicode_escape")
    response = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": name})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tenant"


def _outward_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_disabled_auth_serves_loopback_callers_only_however_the_app_is_started(tmp_path):
    """Started without the CLI (which refuses the setting off loopback), bound to every
    interface: a caller on another address still needs a key."""
    import threading

    import uvicorn

    from service.main import create_app
    from switchboard.service_process import free_port

    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no address besides loopback")
    with FakeUpstreamServer(catalog_prices([MODEL])) as upstream:
        settings = upstream_settings(
            upstream.url, f"sqlite:///{tmp_path / 'l.db'}", ADMIN, auth_disabled=True
        )
        port = free_port()
        config = uvicorn.Config(create_app(settings), host="0.0.0.0", port=port, log_level="error")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            local = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            assert local.status_code == 200
            remote = httpx.post(f"http://{outward}:{port}/v1/chat/completions", json=body)
            assert remote.status_code == 401
            remote_admin = {"Authorization": f"Bearer {ADMIN}"}
            created = httpx.post(
                f"http://{outward}:{port}/v1/admin/keys",
                json={"tenant": "remote"},
                headers=remote_admin,
            )
            keyed = httpx.post(
                f"http://{outward}:{port}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {created.json()['key']}"},
            )
            assert keyed.status_code == 200
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_tenants_cannot_post_feedback_as_the_judge(service):
    server, _ = service
    key = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "impostor"}).json()["key"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    request_id = call(server, "POST", "/v1/chat/completions", key, json=body).headers[
        "x-switchboard-request-id"
    ]
    judged = {"request_id": request_id, "score": 1, "source": "judge"}
    refused = call(server, "POST", "/v1/feedback", key, json=judged)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "source"
    assert call(server, "POST", "/v1/feedback", key, json={**judged, "source": "user"}).is_success
    assert call(server, "POST", "/v1/feedback", ADMIN, json=judged).is_success


def test_a_tenant_name_outside_latin_1_reaches_headers_encoded(service):
    server, _ = service
    created = call(server, "POST", "/v1/admin/keys", ADMIN, json={"tenant": "🚀rocket"}).json()
    budget = {"scope": "tenant:🚀rocket", "period": "day", "limit_usd": 1e-9}
    assert call(server, "POST", "/v1/admin/budgets", ADMIN, json=budget).status_code == 200
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    refused = call(server, "POST", "/v1/chat/completions", created["key"], json=body)
    assert refused.status_code == 402, refused.text
    assert refused.headers["x-switchboard-budget-scope"] == "tenant:%F0%9F%9A%80rocket"
    assert "🚀rocket" in refused.json()["error"]["message"]
    row = call(server, "GET", f"/v1/requests/{refused.headers['x-switchboard-request-id']}",
               created["key"]).json()  # fmt: skip
    assert row["http_status"] == 402


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://10.0.0.8/hook"])
def test_a_refused_webhook_names_the_setting_that_allows_it(url):
    from service.alerts import WebhookRefused, check_webhook_url

    with pytest.raises(WebhookRefused) as refused:
        check_webhook_url(url, allow_private=False)
    assert "SWITCHBOARD_ALLOW_PRIVATE_WEBHOOKS" in str(refused.value)
    assert check_webhook_url(url, allow_private=True)


def test_one_tenant_cannot_take_every_slot_from_another(tmp_path):
    """A tenant at its limit of requests in flight gets 429 with Retry-After at once; another
    tenant is served meanwhile, and the first gets its slots back as its requests end."""

    async def run(server, busy, other):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "slow please"}]}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def ask(key, stream=False):
                return await client.post(
                    "/v1/chat/completions",
                    json={**body, "stream": stream},
                    headers={"Authorization": f"Bearer {key}"},
                )

            slow = [asyncio.create_task(ask(busy, stream=i % 2 == 0)) for i in range(3)]
            await asyncio.sleep(0.5)  # all three in flight
            refused = await ask(busy)
            started = time.perf_counter()
            served = await ask(other)
            other_seconds = time.perf_counter() - started
            done = await asyncio.gather(*slow)
            again = await ask(busy)
            return refused, served, other_seconds, done, again

    with FakeUpstreamServer(catalog_prices([MODEL])) as upstream:
        httpx.post(
            f"{upstream.control_url}/faults",
            json={"model": MODEL, "fault": "none", "latency_ms": 1500, "times": 4},
        )
        settings = upstream_settings(
            upstream.url, f"sqlite:///{tmp_path / 'l.db'}", ADMIN, max_concurrency_per_tenant=3
        )
        with ServiceServer(settings) as server:
            busy, other = server.create_key("busy"), server.create_key("other")
            refused, served, other_seconds, done, again = asyncio.run(run(server, busy, other))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "concurrency_limited"
    assert served.status_code == 200 and other_seconds < 3.0  # latency rule: 1.5 s, not a queue
    assert [r.status_code for r in done] == [200, 200, 200]
    assert again.status_code == 200  # slots given back, streamed ones included


@pytest.mark.slow
def test_slow_clients_are_cut_off_at_their_deadlines(tmp_path):
    """`switchboard serve` closes a connection that sends no request, or its headers too
    slowly, with 408; a body that trickles in is answered 408; a normal request on the same
    service is served."""
    import socket

    def talk(port: int, pieces: list[bytes], gap_s: float) -> tuple[bytes, float]:
        started = time.monotonic()
        received = b""
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            try:
                for piece in pieces:
                    sock.sendall(piece)
                    time.sleep(gap_s)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server gave up on us: read what it said
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
        return received, time.monotonic() - started

    with FakeUpstreamServer(catalog_prices([MODEL])) as upstream:
        env = upstream_env(f"sqlite:///{tmp_path / 'l.db'}", upstream.url, admin_key=ADMIN)
        env |= {
            "SWITCHBOARD_CLIENT_HEADER_TIMEOUT_S": "1",
            "SWITCHBOARD_CLIENT_BODY_TIMEOUT_S": "1",
        }
        with ServiceProcess(env, log_path=tmp_path / "service.log") as service:
            port = service.port
            silent, seconds = talk(port, [], 0)
            assert silent.startswith(b"HTTP/1.1 408") and seconds < 5
            head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            trickled, seconds = talk(port, [head[:10], head[10:20], head[20:]], 0.6)
            assert trickled.startswith(b"HTTP/1.1 408") and seconds < 5
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            request = (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}"
                f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode()
            slow_body, seconds = talk(port, [request, body[:5].encode(), body[5:].encode()], 1.5)
            assert slow_body.startswith(b"HTTP/1.1 408") and b"request body" in slow_body
            served = call(service, "POST", "/v1/chat/completions", ADMIN, json=json.loads(body))
            assert served.status_code == 200
