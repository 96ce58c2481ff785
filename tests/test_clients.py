"""What real clients call, through the official openai SDK against the service in front of the
fake OpenRouter-compatible upstream (which logs every body it receives)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from service.routing.learned import LearnedRouter
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, upstream_settings

ADMIN = "sb-admin-clients"
MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstreamServer(catalog_prices([MODEL, "openai/gpt-4o"])) as server:
        yield server


@pytest.fixture(scope="module")
def service(upstream, database_url):
    with ServiceServer(upstream_settings(upstream.url, database_url, ADMIN)) as server:
        yield server


@pytest.fixture(scope="module")
def client(service):
    return OpenAI(base_url=f"{service.url}/v1", api_key=service.create_key("clients"))


def last_body(upstream) -> dict:
    return upstream.state.requests[-1]["body"]


def test_every_streamed_chunk_carries_the_request_id_feedback_takes(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream this please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    request_id = raw.headers["x-switchboard-request-id"]
    assert {c.id for c in chunks} == {request_id}
    rated = client.post(
        "/feedback", body={"request_id": chunks[0].id, "score": 1.0}, cast_to=httpx.Response
    )
    assert rated.status_code == 201


def test_explicit_nulls_reach_the_upstream_as_the_client_sent_them(client, upstream):
    tool_turn = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "call a tool"},
            tool_turn,
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
    )
    sent = last_body(upstream)["messages"][1]
    assert "content" in sent and sent["content"] is None and sent["tool_calls"]
    assert "switchboard" not in last_body(upstream)


def test_models_retrieve_finds_catalog_models_and_404s_the_rest(client, service):
    found = client.models.retrieve(MODEL)
    assert found.id == MODEL and found.model_extra["pricing"]["prompt"]
    auto = client.models.retrieve("switchboard/auto")
    assert auto.id == "switchboard/auto"
    # the serving router's version: in the auto entry and beside every model's routability
    serving = LearnedRouter.load(service.settings.router_dir)
    assert auto.model_extra["switchboard"]["router_version"] == serving.version
    assert auto.model_extra["switchboard"]["router"] == "learned"
    listed = client.models.list().data
    assert {m.model_extra["switchboard"]["router_version"] for m in listed} == {serving.version}
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("vendor/nothing-like-it")
    assert missing.value.body["code"] == "model_not_found"


def test_n_answers_pass_through_priced_recorded_and_held(client, upstream, service):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    key_id = httpx.get(f"{service.url}/v1/admin/keys", headers=admin).json()["data"][-1]["id"]
    budget = {"scope": f"key:{key_id}", "period": "day", "limit_usd": 5.0}
    assert httpx.post(f"{service.url}/v1/admin/budgets", json=budget, headers=admin).is_success
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "two answers"}], n=2, max_tokens=10
    )
    answer = raw.parse()
    assert [c.index for c in answer.choices] == [0, 1]
    assert last_body(upstream)["n"] == 2
    row = httpx.get(f"{service.url}/v1/requests/{answer.id}", headers=admin).json()
    assert (
        row["completion_tokens"] == answer.usage.completion_tokens == 2 * 3
    )  # "echo: two answers"
    assert row["cost_usd"] == pytest.approx(answer.usage.cost)
    one = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "two answers"}], max_tokens=10
    )
    single = httpx.get(f"{service.url}/v1/requests/{one.id}", headers=admin).json()
    assert row["reserved_usd"] > single["reserved_usd"]  # held for both answers


@pytest.fixture(scope="module")
def stated(database_url):
    """The shipped router behind an upstream that states what each model supports, and refuses
    what a model does not support, the way OpenRouter does."""
    import json as _json

    from service.config import Settings
    from switchboard.fake_upstream import catalog_capabilities

    router_models = _json.loads((Settings().router_dir / "router.json").read_text())["models"]
    served = [m for m in router_models if "/" in m]
    prices, stated_models = catalog_prices(served), catalog_capabilities(served)
    with (
        FakeUpstreamServer(prices, capabilities=stated_models) as upstream,
        ServiceServer(upstream_settings(upstream.url, database_url, ADMIN)) as server,
    ):
        yield server, upstream


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    ("extra", "needed"),
    [({"tools": TOOLS}, "tools"), ({"response_format": SCHEMA}, "structured_outputs")],
    ids=["tools", "json_schema"],
)
def test_auto_routes_only_to_models_that_support_what_the_request_uses(stated, extra, needed):
    from service.catalog import Catalog

    server, upstream = stated
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.create_key("needs"), max_retries=0)
    before = len(upstream.state.requests)
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="switchboard/auto",
            messages=[{"role": "user", "content": f"call a tool to look up order {i}"}],
            **extra,
        )
        answer = raw.parse()
        assert raw.headers["x-switchboard-fallbacks"] == "0"  # no hop to a model that refuses
        supported = Catalog.load().get(answer.model).supported_parameters or ()
        assert needed in supported or "response_format" in supported
        row = httpx.get(
            f"{server.url}/v1/requests/{answer.id}", headers={"Authorization": f"Bearer {ADMIN}"}
        ).json()
        reasons = [m["reason"] for m in row["left_out"]]
        assert any(r.startswith("does not support") for r in reasons)
    refused = [e for e in upstream.state.requests[before:] if e["fault"] is None]
    assert len(refused) == 3  # one upstream call per request


def test_the_router_reads_tools_and_answer_format_as_part_of_the_task(stated):
    from service.capabilities import routing_hint

    assert routing_hint({"tools": TOOLS}) == "\n\n[call one of the tools lookup]"
    assert routing_hint({"response_format": SCHEMA, "tools": []}) == "\n\n[answer in JSON]"
    assert routing_hint({"response_format": {"type": "text"}}) == ""
    server, _ = stated
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.create_key("hint"), max_retries=0)
    model = "openai/gpt-4o-mini"
    p_pass = {}
    for name, extra in {"plain": {}, "tools": {"tools": TOOLS}}.items():
        raw = client.chat.completions.with_raw_response.create(
            model="switchboard/auto",
            messages=[{"role": "user", "content": "What is the status of order 7?"}],
            extra_body={"switchboard": {"allowed_models": [model]}},
            **extra,
        )
        assert raw.parse().model == model
        p_pass[name] = float(raw.headers["x-switchboard-p-pass"])
    assert p_pass["plain"] != p_pass["tools"]  # the same text, scored as another task


def test_a_request_no_candidate_can_serve_names_what_it_needs(stated):
    server, _ = stated
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.create_key("huge"), max_retries=0)
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="switchboard/auto",
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, audio]}],
        )
    body = refused.value.body
    assert body["code"] == "unsupported_request" and "audio input" in body["message"]


def test_langchain_chatopenai_invokes_streams_calls_tools_and_structures(stated):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel as Schema

    server, upstream = stated
    chat = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=server.create_key("langchain"),
        model="switchboard/auto",
        max_retries=0,
    )
    answer = chat.invoke("Say hello")
    assert answer.content == "echo: Say hello"
    assert answer.response_metadata["model_name"]
    streamed = "".join(chunk.content for chunk in chat.stream("Stream hello"))
    assert streamed == "echo: Stream hello"

    def lookup(order: str) -> str:
        """Look up an order."""
        return order

    called = chat.bind_tools([lookup]).invoke("call a tool for order 7")
    assert called.tool_calls and called.tool_calls[0]["name"] == "lookup"
    sent = upstream.state.requests[-1]["body"]
    assert sent["tools"][0]["function"]["name"] == "lookup"

    class Answer(Schema):
        text: str = ""

    structured = chat.with_structured_output(Answer, method="json_schema", include_raw=True)
    result = structured.invoke("Reply as JSON")
    assert upstream.state.requests[-1]["body"]["response_format"]["type"] == "json_schema"
    assert result["raw"].response_metadata["model_name"]


def test_embeddings_completions_and_responses_pass_through_priced_and_recorded(
    client, service, upstream
):
    admin = {"Authorization": f"Bearer {ADMIN}"}

    def row(request_id):
        return httpx.get(f"{service.url}/v1/requests/{request_id}", headers=admin).json()

    raw = client.embeddings.with_raw_response.create(model=MODEL, input=["one two", "three"])
    vectors = raw.parse()
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8
    recorded = row(raw.headers["x-switchboard-request-id"])
    assert recorded["endpoint"] == "embeddings" and recorded["status"] == "ok"
    assert recorded["prompt_tokens"] == 3 and recorded["cost_usd"] > 0
    legacy = client.completions.with_raw_response.create(model=MODEL, prompt="say it")
    assert legacy.parse().choices[0].text == "echo: say it"
    assert row(legacy.headers["x-switchboard-request-id"])["endpoint"] == "completions"
    raw = client.responses.with_raw_response.create(model=MODEL, input="respond please")
    response = raw.parse()
    assert response.output_text == "echo: respond please"
    recorded = row(raw.headers["x-switchboard-request-id"])
    assert recorded["endpoint"] == "responses" and recorded["completion_tokens"] == 3
    assert recorded["cost_usd"] == pytest.approx(response.usage.model_extra["cost"])
    routed = client.responses.with_raw_response.create(
        model="switchboard/auto", instructions="Be brief.", input="What is a hash map?"
    )
    decision = row(routed.headers["x-switchboard-request-id"])
    assert decision["router"] == "learned" and decision["served_model"]
    assert upstream.state.requests[-1]["path"].endswith("/responses")
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="switchboard/auto", input="x")
    assert "not routed" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="x", stream=True)


def test_litellm_completes_streams_and_keeps_the_error_code(service, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price table
    import litellm

    admin = {"Authorization": f"Bearer {ADMIN}"}
    key = service.create_key("litellm")
    options = {"api_base": f"{service.url}/v1", "api_key": key, "num_retries": 0}
    messages = [{"role": "user", "content": "hello litellm"}]
    answer = litellm.completion(model=f"openai/{MODEL}", messages=messages, **options)
    assert answer.choices[0].message.content == "echo: hello litellm"
    streamed = litellm.completion(
        model="openai/switchboard/auto", messages=messages, stream=True, **options
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "echo: hello litellm"
    with pytest.raises(litellm.BadRequestError) as invalid:
        litellm.completion(model=f"openai/{MODEL}", messages=messages, n=1000, **options)
    assert invalid.value.code == "invalid_request"
    budget = {"scope": "tenant:litellm", "period": "day", "limit_usd": 1e-9}
    assert httpx.post(f"{service.url}/v1/admin/budgets", json=budget, headers=admin).is_success
    with pytest.raises(litellm.APIError) as refused:
        litellm.completion(model=f"openai/{MODEL}", messages=messages, **options)
    # LiteLLM maps statuses it has no class for (402) to APIError without the body; the
    # response it keeps carries the OpenAI-shaped error, code included.
    assert refused.value.status_code == 402
    error = refused.value.response.json()["error"]
    assert error == {
        "message": error["message"],
        "type": "insufficient_quota",
        "param": "budget",
        "code": "budget_exceeded",
    }
    with pytest.raises(openai.APIStatusError) as same:  # the openai SDK reads the code itself
        OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0).chat.completions.create(
            model=MODEL, messages=messages
        )
    assert same.value.status_code == 402 and same.value.code == "budget_exceeded"
