"""The gateway as clients see it: the official openai package against a running service, whose
upstream is the fake OpenRouter on loopback. Every test also checks the ledger's record.

Runs on SQLite, and on PostgreSQL too where SWITCHBOARD_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from service.config import Settings
from service.providers.resilience import CircuitBreaker
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, upstream_settings

ADMIN = "admin-secret-for-tests"
PROMPT = "What is the boiling point of water at sea level in Celsius?"
EXPLICIT = "openai/gpt-4o"


@pytest.fixture(scope="module")
def upstream():
    router_models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
    prices = catalog_prices([*router_models, EXPLICIT, "openai/gpt-4o-mini"])
    with FakeUpstreamServer(prices) as server:
        yield server


@pytest.fixture(scope="module")
def service(upstream, database_url):
    settings = upstream_settings(
        upstream.url,
        database_url,
        ADMIN,
        retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_retry_after_s=2,
        read_timeout_s=1.0,
        breaker_failures=1000,
    )
    with ServiceServer(settings) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_faults(request, upstream):
    httpx.delete(f"{upstream.control_url}/faults")
    yield
    httpx.delete(f"{upstream.control_url}/faults")


@pytest.fixture(scope="module")
def key(service):
    return service.create_key("acme")


@pytest.fixture(scope="module")
def client(service, key):
    return OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0)


def fault(upstream, **rule):
    httpx.post(f"{upstream.control_url}/faults", json=rule).raise_for_status()


def ledger(service, key, request_id):
    response = httpx.get(
        f"{service.url}/v1/requests/{request_id}", headers={"Authorization": f"Bearer {key}"}
    )
    response.raise_for_status()
    return response.json()


def ask(client, content=PROMPT, **options):
    messages = [{"role": "user", "content": content}]
    raw = client.chat.completions.with_raw_response.create(
        model=options.pop("model", "switchboard/auto"), messages=messages, **options
    )
    return raw.parse(), raw.headers


def test_auto_routing_answers_with_the_served_model_cost_and_headers(service, client, key):
    completion, headers = ask(client)
    request_id = headers["x-switchboard-request-id"]
    router_models = service.app_state().gateway.router.models
    assert completion.model in router_models
    assert completion.choices[0].message.content == f"echo: {PROMPT}"
    assert completion.usage.cost > 0
    assert headers["x-switchboard-model"] == completion.model
    assert headers["x-switchboard-router"].startswith("learned@")
    assert 0 <= float(headers["x-switchboard-p-pass"]) <= 1
    assert float(headers["x-switchboard-cost-usd"]) == pytest.approx(completion.usage.cost)
    assert float(headers["x-switchboard-overhead-ms"]) >= 0
    row = ledger(service, key, request_id)
    assert row["status"] == "ok" and row["http_status"] == 200
    assert row["served_model"] == row["chosen_model"] == completion.model
    assert row["cost_usd"] == pytest.approx(completion.usage.cost)
    assert row["upstream_cost_usd"] == pytest.approx(row["catalog_cost_usd"])
    assert row["prompt_tokens"] == completion.usage.prompt_tokens
    considered = {c["model"] for c in row["candidates"]} | {m["model"] for m in row["left_out"]}
    assert considered == set(router_models)  # each one a candidate, or left out with a reason
    assert all(m["reason"] for m in row["left_out"])
    assert row["propensity"] == 1.0 and row["threshold"] > 0
    assert row["prompt"] is None  # content is not stored unless configured
    assert completion.model_extra["switchboard"]["rule"] in (
        "cheapest_clearing_threshold",
        "most_likely_to_pass",
    )


def test_feedback_joins_on_the_request_id(service, client, key):
    completion, headers = ask(client)
    assert completion.id == headers["x-switchboard-request-id"]
    auth = {"Authorization": f"Bearer {key}"}
    for body in ({"score": 0.75}, {"thumbs": "down", "comment": "wrong"}):
        response = httpx.post(
            f"{service.url}/v1/feedback", json={"request_id": completion.id, **body}, headers=auth
        )
        assert response.status_code == 201, response.text
    missing = httpx.post(
        f"{service.url}/v1/feedback", json={"request_id": "sbr-nope", "score": 1}, headers=auth
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
    both = httpx.post(
        f"{service.url}/v1/feedback",
        json={"request_id": completion.id, "score": 1, "thumbs": "up"},
        headers=auth,
    )
    assert both.status_code == 400


def test_a_tenant_cannot_see_or_rate_another_tenants_requests(service, client):
    completion, _ = ask(client)
    other = {"Authorization": f"Bearer {service.create_key('globex')}"}
    rate = httpx.post(
        f"{service.url}/v1/feedback", json={"request_id": completion.id, "score": 1}, headers=other
    )
    assert rate.status_code == 404
    assert httpx.get(f"{service.url}/v1/requests/{completion.id}", headers=other).status_code == 404
    listed = httpx.get(f"{service.url}/v1/requests", headers=other).json()
    assert completion.id not in {row["id"] for row in listed["data"]}


def test_the_request_list_is_newest_first_with_totals_and_checks_its_parameters(
    service, client, key
):
    completion, _ = ask(client)
    auth = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(f"{service.url}/v1/requests", params={"limit": 5}, headers=auth).json()
    assert listed["data"][0]["id"] == completion.id and len(listed["data"]) <= 5
    assert listed["summary"]["requests"] >= 1 and listed["summary"]["cost_usd"] > 0
    errors = httpx.get(f"{service.url}/v1/requests", params={"status": "error"}, headers=auth)
    assert all(row["status"] == "error" for row in errors.json()["data"])
    admin = {"Authorization": f"Bearer {ADMIN}"}
    everyone = httpx.get(f"{service.url}/v1/requests", headers=admin).json()["summary"]
    assert everyone["requests"] >= listed["summary"]["requests"]
    for params in ({"limit": "abc"}, {"limit": 0}, {"limit": 5000}, {"status": "weird"}):
        bad = httpx.get(f"{service.url}/v1/requests", params=params, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_explicit_models_pass_through_and_models_list_falls_back(upstream, service, client, key):
    completion, headers = ask(client, model=EXPLICIT)
    assert completion.model == EXPLICIT and headers["x-switchboard-router"] == "none"
    fault(upstream, model=EXPLICIT, fault="500", times=-1)
    completion, headers = ask(client, model=EXPLICIT, extra_body={"models": ["openai/gpt-4o-mini"]})
    assert completion.model == "openai/gpt-4o-mini"
    assert headers["x-switchboard-fallbacks"] == "1"
    row = ledger(service, key, completion.id)
    assert row["fallbacks"][0]["model"] == EXPLICIT and row["attempts"] == 4


@pytest.mark.parametrize("kind", ["429", "500", "503", "timeout", "reset", "malformed"])
def test_a_transient_upstream_fault_is_retried(upstream, service, client, key, kind):
    fault(upstream, model="*", fault=kind, times=1, retry_after=1, latency_ms=3000)
    completion, headers = ask(client)
    row = ledger(service, key, completion.id)
    assert (
        row["status"] == "ok" and row["attempts"] == 2 and headers["x-switchboard-fallbacks"] == "0"
    )


def test_a_failing_model_is_replaced_by_the_next_candidate(upstream, service, client, key):
    fault(upstream, model="*", fault="502", times=3)  # every attempt on the first choice
    completion, headers = ask(client)
    row = ledger(service, key, completion.id)
    assert headers["x-switchboard-fallbacks"] == "1"
    assert row["fallbacks"][0]["model"] == row["chosen_model"] != row["served_model"]
    assert row["attempts"] == 4 and row["status"] == "ok"


def test_when_every_attempt_fails_the_caller_gets_a_clear_error_and_the_ledger_the_truth(
    upstream, service, client, key
):
    fault(upstream, model=EXPLICIT, fault="503", times=-1)
    with pytest.raises(openai.APIStatusError) as error:
        ask(client, model=EXPLICIT)
    assert error.value.status_code == 502
    body = error.value.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["code"] == "upstream_error"
    request_id = error.value.response.headers["x-switchboard-request-id"]
    row = ledger(service, key, request_id)
    assert row["status"] == "error" and row["http_status"] == 502 and row["attempts"] == 3
    assert row["cost_usd"] is None and row["served_model"] is None


def test_rate_limits_that_outlast_retries_reach_the_caller_with_retry_after(upstream, client):
    fault(upstream, model=EXPLICIT, fault="429", times=-1, retry_after=1)
    with pytest.raises(openai.RateLimitError) as error:
        ask(client, model=EXPLICIT)
    assert error.value.response.headers["retry-after"] == "1"


def test_streaming_relays_chunks_and_ends_with_usage_cost_and_routing(service, key):
    async def run():
        client = AsyncOpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0)
        stream = await client.chat.completions.create(
            model="switchboard/auto",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        return chunks

    chunks = asyncio.run(run())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: {PROMPT}"
    final = chunks[-1]
    assert final.choices == [] and final.usage.cost > 0
    metadata = final.model_extra["switchboard"]
    row = ledger(service, key, metadata["request_id"])
    assert row["stream"] and row["status"] == "ok"
    assert row["cost_usd"] == pytest.approx(final.usage.cost)
    assert row["completion_tokens"] == final.usage.completion_tokens


def test_a_stream_whose_first_chunk_is_not_json_is_retried_before_the_first_byte(
    upstream, client, service, key
):
    fault(upstream, model="*", fault="malformed", times=1)
    raw = client.chat.completions.with_raw_response.create(
        model=EXPLICIT, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    chunks = list(raw.parse())  # the official client parses every chunk: none is malformed
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        f"echo: {PROMPT}"
    )
    row = ledger(service, key, raw.headers["x-switchboard-request-id"])
    assert row["status"] == "ok" and row["attempts"] == 2


def test_streams_without_include_usage_carry_no_usage_chunk(client):
    stream = client.chat.completions.create(
        model="switchboard/auto", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    chunks = list(stream)
    assert all(chunk.usage is None for chunk in chunks) and chunks[-1].choices


def sse_events(service, key, model):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        f"{service.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
        return response, lines


@pytest.mark.parametrize("kind", ["cut_stream", "error_in_stream"])
def test_a_stream_that_breaks_after_the_first_byte_ends_with_an_error_event(
    upstream, service, key, kind
):
    fault(upstream, model=EXPLICIT, fault=kind, times=1)
    response, lines = sse_events(service, key, EXPLICIT)
    assert response.status_code == 200
    assert lines[-1] != "data: [DONE]"
    assert json.loads(lines[-1][5:])["error"]["code"] == "stream_interrupted"
    row = ledger(service, key, response.headers["x-switchboard-request-id"])
    assert row["status"] == "error" and row["error_code"] == "stream_interrupted"
    assert row["completion_tokens"] >= 1  # what was streamed is still counted and priced
    assert row["cost_usd"] > 0


def test_a_stream_that_fails_before_the_first_byte_falls_back(upstream, service, key):
    fault(upstream, model=EXPLICIT, fault="500", times=-1)
    body = {
        "model": EXPLICIT,
        "models": ["openai/gpt-4o-mini"],
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{service.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert response.headers["x-switchboard-model"] == "openai/gpt-4o-mini"


def test_an_open_circuit_takes_a_failing_model_out_of_routing(upstream, service, client, key):
    state = service.app_state()
    state.gateway.breaker = CircuitBreaker(failures=2, cooldown_s=60)
    try:
        first, _ = ask(client)
        chosen = first.model
        fault(upstream, model=chosen, fault="500", times=-1)
        ask(client)  # two requests failed on the chosen model (after their retries)
        ask(client)
        completion, _ = ask(client)
        row = ledger(service, key, completion.id)
        assert completion.model != chosen
        assert chosen not in [c["model"] for c in row["candidates"]]
    finally:
        state.gateway.breaker = CircuitBreaker(failures=1000, cooldown_s=60)


def test_one_failing_request_retried_by_its_client_leaves_the_circuit_closed(
    upstream, service, key
):
    state = service.app_state()
    state.gateway.breaker = CircuitBreaker(failures=5, cooldown_s=60)
    try:
        retrying = OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=2)
        fault(upstream, model=EXPLICIT, fault="500", times=9)  # 3 client tries x 3 attempts
        before = len(upstream.state.requests)
        with pytest.raises(openai.InternalServerError):
            retrying.chat.completions.create(
                model=EXPLICIT, messages=[{"role": "user", "content": PROMPT}]
            )
        failed = [e for e in upstream.state.requests[before:] if e["fault"] == "500"]
        assert len(failed) == 9
        assert not state.gateway.breaker.is_open(EXPLICIT)
        answer = retrying.chat.completions.create(
            model=EXPLICIT, messages=[{"role": "user", "content": PROMPT}]
        )
        assert answer.model == EXPLICIT  # the next request is served
    finally:
        state.gateway.breaker = CircuitBreaker(failures=1000, cooldown_s=60)


def test_a_full_upstream_queue_answers_429_with_retry_after(upstream, service, key):
    from service.providers.resilience import ConcurrencyLimit

    state = service.app_state()
    limits = state.gateway.limits
    state.gateway.limits = {name: ConcurrencyLimit(1, 0) for name in limits}
    fault(upstream, model="*", fault="none", latency_ms=500, times=-1)
    body = {"model": EXPLICIT, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {key}"}

    async def both():
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=10) as c:
            return await asyncio.gather(
                *(c.post("/v1/chat/completions", json=body) for _ in range(2))
            )

    try:
        statuses = sorted(r.status_code for r in asyncio.run(both()))
        refused = [r for r in asyncio.run(both()) if r.status_code == 429]
    finally:
        state.gateway.limits = limits
    assert statuses == [200, 429]
    assert refused and refused[0].headers["retry-after"] == "1"
    assert refused[0].json()["error"]["code"] == "queue_full"


def raw_post(service, body, key, content=None, headers=None):
    return httpx.post(
        f"{service.url}/v1/chat/completions",
        json=body if content is None else None,
        content=content,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("body", "content", "status", "code", "param"),
    [
        (None, b"{not json", 400, "invalid_request", None),
        ({"model": "switchboard/auto", "messages": "hi"}, None, 400, "invalid_request", "messages"),
        ({"model": "switchboard/auto", "messages": []}, None, 400, "invalid_request", "messages"),
        (
            {"model": "switchboard/auto", "messages": [{"role": "user", "content": ""}]},
            None,
            400,
            "invalid_request",
            "messages",
        ),
        (
            {
                "model": "switchboard/auto",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": "hot",
            },
            None,
            400,
            "invalid_request",
            "temperature",
        ),
        (
            {"model": "no/such-model", "messages": [{"role": "user", "content": "hi"}]},
            None,
            404,
            "model_not_found",
            "model",
        ),
        (
            {
                "model": "switchboard/auto",
                "messages": [{"role": "user", "content": "hi"}],
                "switchboard": {"quality_threshold": 3},
            },
            None,
            400,
            "invalid_request",
            "switchboard.quality_threshold",
        ),
        (
            {
                "model": "switchboard/auto",
                "messages": [{"role": "user", "content": "hi"}],
                "switchboard": {"max_cost_usd": 0},
            },
            None,
            422,
            "no_candidate_model",
            None,
        ),
        (
            {
                "model": "switchboard/auto",
                "messages": [{"role": "user", "content": "hi"}],
                "switchboard": {"allowed_models": ["no/such"]},
            },
            None,
            422,
            "no_candidate_model",
            None,
        ),
    ],
)
def test_bad_requests_get_the_right_4xx_in_openai_shape(
    service, key, body, content, status, code, param
):
    response = raw_post(service, body, key, content=content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if param:
        assert error["param"] == param


def test_a_10_mb_body_is_refused_with_413_and_nothing_recorded(service, key):
    state = service.app_state()
    before = asyncio.run(_count_requests(state))
    big = (
        b'{"model": "switchboard/auto", "messages": [{"role": "user", "content": "'
        + b"x" * (10 * 1024 * 1024)
        + b'"}]}'
    )
    response = raw_post(service, None, key, content=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert asyncio.run(_count_requests(state)) == before


async def _count_requests(state):
    from service.config import to_async_url
    from service.ledger import Ledger
    from service.tables import requests

    ledger = Ledger.connect(to_async_url(state.settings.database_url))
    try:
        return await ledger.count(requests)
    finally:
        await ledger.close()


def test_missing_or_wrong_keys_get_401_and_tenant_routes_refuse_admin_only_calls(service, key):
    body = {"model": "switchboard/auto", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{service.url}/v1/chat/completions", json=body).status_code == 401
    assert raw_post(service, body, "sb-wrong").status_code == 401
    refused = httpx.post(
        f"{service.url}/v1/admin/keys",
        json={"tenant": "x"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert refused.status_code == 403


def test_routing_controls_from_body_and_headers(service, client):
    cheap_only = ["mistralai/mistral-7b-instruct-v0.1"]
    completion, headers = ask(client, extra_body={"switchboard": {"allowed_models": cheap_only}})
    assert completion.model == cheap_only[0]
    completion, headers = ask(
        client,
        extra_headers={"x-switchboard-quality-threshold": "0", "x-switchboard-router": "heuristic"},
    )
    assert headers["x-switchboard-threshold"] == "0.0000"
    assert headers["x-switchboard-router"].startswith("heuristic")
    bad = ask_raw_headers(service, client.api_key, {"x-switchboard-quality-threshold": "high"})
    assert bad.status_code == 400


def test_the_value_rule_from_body_or_header_and_never_with_a_threshold(service, key):
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{service.url}/v1/route"

    def decide(controls=None, headers=None):
        body = {"prompt": PROMPT, **({"switchboard": controls} if controls else {})}
        return httpx.post(url, json=body, headers={**auth, **(headers or {})})

    cheap = decide({"answer_value_usd": 1e-9}).json()
    assert cheap["rule"] == "highest_expected_value" and cheap["threshold"] is None
    body = {"model": "switchboard/auto", "messages": [{"role": "user", "content": PROMPT}]}
    served = raw_post(service, {**body, "switchboard": {"answer_value_usd": 0.5}}, key)
    assert served.json()["switchboard"]["rule"] == "highest_expected_value"
    row = ledger(service, key, served.headers["x-switchboard-request-id"])
    assert row["answer_value_usd"] == 0.5 and row["threshold"] is None
    assert cheap["answer_value_usd"] == 1e-9
    cheapest = min(
        (c for c in cheap["candidates"] if c["expected_cost_usd"] is not None),
        key=lambda c: c["expected_cost_usd"],
    )
    assert cheap["model"] == cheapest["model"]
    rich = decide(headers={"x-switchboard-answer-value-usd": "1000"}).json()
    best = max(
        (c for c in rich["candidates"] if c["expected_cost_usd"] is not None),
        key=lambda c: 1000 * c["p_pass"] - c["expected_cost_usd"],
    )
    assert rich["model"] == best["model"]
    # the body's rule replaces the header's; both in one place is a 400 naming them
    mixed = decide({"quality_threshold": 0.5}, {"x-switchboard-answer-value-usd": "1"}).json()
    assert mixed["rule"] != "highest_expected_value" and mixed["threshold"] == 0.5
    for response in (
        decide({"quality_threshold": 0.5, "answer_value_usd": 1.0}),
        decide(
            headers={
                "x-switchboard-quality-threshold": "0.5",
                "x-switchboard-answer-value-usd": "1",
            }
        ),
        decide({"answer_value_usd": 0}),
        decide(headers={"x-switchboard-answer-value-usd": "plenty"}),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    both = decide({"quality_threshold": 0.5, "answer_value_usd": 1.0}).json()["error"]["message"]
    assert both.startswith("switchboard: give quality_threshold")
    assert "answer_value_usd" in both


def ask_raw_headers(service, key, headers):
    body = {"model": "switchboard/auto", "messages": [{"role": "user", "content": PROMPT}]}
    return raw_post(service, body, key, headers=headers)


def test_route_models_health_and_metrics_endpoints(service, key, client):
    auth = {"Authorization": f"Bearer {key}"}
    decision = httpx.post(f"{service.url}/v1/route", json={"prompt": PROMPT}, headers=auth).json()
    assert decision["model"] == decision["fallback_order"][0]
    assert {"model", "p_pass", "expected_cost_usd"} <= set(decision["candidates"][0])
    assert decision["rule"] and decision["expected_cost_usd"] > 0
    models = client.models.list().data
    ids = {m.id for m in models}
    assert "switchboard/auto" in ids and EXPLICIT in ids and len(ids) > 40
    gpt4o = next(m for m in models if m.id == EXPLICIT)
    assert float(gpt4o.model_extra["pricing"]["prompt"]) > 0
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    ask(client)
    metrics = httpx.get(f"{service.url}/metrics").text
    assert "switchboard_requests_total" in metrics and "switchboard_spend_usd_total" in metrics
    assert "upstream-key" not in metrics


def test_unknown_routes_answer_in_openai_error_shape(service):
    response = httpx.get(f"{service.url}/v1/nothing-here")
    assert response.status_code == 404 and "error" in response.json()


def test_the_breaker_counts_requests_over_a_window_and_tenants_apart():
    breaker = CircuitBreaker(failures=3, cooldown_s=60, window_s=60, failure_ratio=0.5)
    for request in range(3):  # one tenant's failures: its own circuit, not everyone's
        breaker.failure("m", "acme", request)
    assert breaker.is_open("m", "acme") and not breaker.is_open("m", "globex")
    assert breaker.allows("m", "globex", "g1")
    shared = CircuitBreaker(failures=3, cooldown_s=60)
    for request, tenant in enumerate(["acme", "globex", "acme"]):
        shared.failure("m", tenant, request)
    assert shared.is_open("m", "initech")  # a burst from several tenants: everyone's
    mostly_fine = CircuitBreaker(failures=3, cooldown_s=60, failure_ratio=0.5)
    for request in range(10):
        mostly_fine.success("m", "acme" if request % 2 else "globex", request)
    for request, tenant in enumerate(["acme", "globex", "acme"]):
        mostly_fine.failure("m", tenant, 100 + request)
    assert not mostly_fine.is_open("m", "acme")  # 3 of 13 requests failed: under the ratio


def test_a_half_open_trial_refused_by_a_budget_does_not_reopen_the_circuit():
    breaker = CircuitBreaker(failures=2, cooldown_s=0.05)
    for request, tenant in enumerate(["a", "b"]):
        breaker.failure("m", tenant, request)
    assert not breaker.allows("m", "a", "during")
    import time as clock

    clock.sleep(0.06)
    assert breaker.allows("m", "a", "trial")  # the one trial of a cooled circuit
    assert not breaker.allows("m", "b", "other")  # others wait for it
    breaker.release("m", "a", "trial")  # refused by a budget: neither outcome
    assert breaker.allows("m", "b", "next-trial")  # the next request may try
    breaker.success("m", "b", "next-trial")
    assert not breaker.is_open("m", "a") and breaker.allows("m", "a", "after")
