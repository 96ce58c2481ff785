"""Fuzzing: every API operation in the OpenAPI schema (schemathesis), arbitrary JSON bodies on
the chat endpoint, and arbitrary outcomes files (hypothesis): never a 5xx or a crash, never a
half-written record."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchboard.fake_upstream import FakeUpstreamServer
from tests.servers import ServiceServer, upstream_settings
from training.outcomes import OutcomesError, read_outcomes

ADMIN = "sb-admin-fuzz"
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    database = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'ledger.db'}"
    upstream = FakeUpstreamServer(None).start()
    try:
        with ServiceServer(upstream_settings(upstream.url, database, ADMIN)) as server:
            yield server
    finally:
        upstream.stop()


def test_no_operation_answers_a_server_error(service):
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code))

        check()
    assert failures == []


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=JSON)
def test_arbitrary_chat_bodies_get_a_clear_4xx_and_one_complete_record(service, body):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    before = httpx.get(f"{service.url}/v1/requests", headers=auth).json()["summary"]["requests"]
    response = httpx.post(
        f"{service.url}/v1/chat/completions",
        content=json.dumps(body),
        headers={**auth, "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    after = httpx.get(f"{service.url}/v1/requests", headers=auth).json()["summary"]["requests"]
    assert after == before + 1  # exactly one row, whatever the body


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(JSON | st.text(max_size=30), max_size=6),
    suffix=st.sampled_from([".jsonl", ".csv"]),
)
def test_the_outcomes_loader_parses_or_names_the_problem(lines, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"outcomes{suffix}"
        if suffix == ".jsonl":
            text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
        else:
            text = "prompt,model,quality\n" + "\n".join(
                x if isinstance(x, str) else json.dumps(x) for x in lines
            )
        path.write_text(text)
        try:
            table = read_outcomes(path)
        except OutcomesError as error:
            assert str(error).startswith(str(path))
            return
        assert {"prompt", "model", "quality", "prompt_id"} <= set(table.columns)
        assert table["quality"].between(0, 1).all()


@pytest.fixture(scope="module")
def stored(database_url):
    """The service on each ledger backend (PostgreSQL refuses NUL in text, SQLite does not)."""
    upstream = FakeUpstreamServer(None).start()
    try:
        with ServiceServer(upstream_settings(upstream.url, database_url, ADMIN)) as server:
            yield server
    finally:
        upstream.stop()


CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
UNSTORABLE = {
    "NUL in user": ("POST", "/v1/chat/completions", {**CHAT, "user": "a\u0000b"}),
    "NUL in content": (
        "POST",
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": "x\u0000"}]},
    ),
    "NUL in a key": ("POST", "/v1/chat/completions", {**CHAT, "metadata": {"k\u0000": 1}}),
    "lone surrogate": (
        "POST",
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]},
    ),
    "NUL in feedback": ("POST", "/v1/feedback", {"request_id": "x", "score": 1, "comment": "\0"}),
    "NUL in admin body": ("POST", "/v1/admin/keys", {"tenant": "a\u0000b"}),
    "NUL in a path": ("GET", "/v1/requests/sbr-%00", None),
    "NUL in a query": ("GET", "/v1/requests?status=ok%00", None),
    "bad UTF-8 in a query": ("GET", "/v1/analytics/summary?tenant=%ff", None),
}


@pytest.mark.parametrize("case", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_text_the_ledger_cannot_store_is_refused_at_the_edge(stored, case):
    method, path, body = case
    auth = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    before = httpx.get(f"{stored.url}/v1/requests", headers=auth).json()["summary"]["requests"]
    content = None if body is None else json.dumps(body)  # ensure_ascii: \\u0000, \\ud800
    response = httpx.request(method, f"{stored.url}{path}", content=content, headers=auth)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    listed = httpx.get(f"{stored.url}/v1/requests", headers=auth, timeout=3)
    assert listed.status_code == 200  # the ledger is not wedged
    after = listed.json()["summary"]["requests"]
    assert after == before + (1 if path == "/v1/chat/completions" else 0)


def test_deep_nesting_is_refused_and_the_connection_still_serves(stored):
    auth = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    deep = '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
    deep += '"metadata": ' + "[" * 5000 + "]" * 5000 + "}"
    fine = json.dumps(CHAT)
    with httpx.Client(base_url=stored.url, headers=auth, timeout=10) as client:  # one connection
        for _ in range(2):
            refused = client.post("/v1/chat/completions", content=deep)
            assert refused.status_code == 400, refused.text
            assert "nests more than 64 levels" in refused.json()["error"]["message"]
            assert client.post("/v1/chat/completions", content=fine).status_code == 200
        nested = {**CHAT, "metadata": json.loads("[" * 100 + "]" * 100)}  # parses, but too deep
        assert client.post("/v1/chat/completions", json=nested).status_code == 400


LOOSE = {
    "a boolean as max_tokens": ("/v1/chat/completions", {**CHAT, "max_tokens": True}, "max_tokens"),
    "a string as stream": ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
    "a string as temperature": ("/v1/chat/completions", {**CHAT, "temperature": "0.5"}, None),
    "Infinity as a limit": (
        "/v1/admin/budgets",
        '{"scope": "global", "period": "day", "limit_usd": Infinity}',
        None,
    ),
    "NaN as a threshold": (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "hi"}], "switchboard": '
        '{"quality_threshold": NaN}}',
        None,
    ),
    "a huge float as a limit": (
        "/v1/admin/budgets",
        '{"scope": "global", "period": "day", "limit_usd": 1e999}',
        None,
    ),
}


@pytest.mark.parametrize("case", LOOSE.values(), ids=LOOSE.keys())
def test_the_wire_types_are_strict_and_numbers_finite(stored, case):
    path, body, param = case
    auth = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{stored.url}{path}", content=content, headers=auth)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


def test_the_openapi_document_declares_the_request_bodies(service):
    """So that the schema fuzzing above reaches the bodies, not only paths and queries."""
    document = httpx.get(f"{service.url}/openapi.json").json()
    without_body = {"/v1/admin/keys/{key_id}/revoke", "/v1/admin/experiments/{name}/stop"}
    posts = {p: o["post"] for p, o in document["paths"].items() if "post" in o}
    for path, operation in posts.items():
        if path in without_body:
            continue
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[-1]
        assert name in document["components"]["schemas"], path
    chat = document["components"]["schemas"]["ChatRequest"]
    assert {"messages", "max_tokens", "stream"} <= set(chat["properties"])
