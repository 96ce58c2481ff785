"""The embedded default upstream: recorded answers only, never an invented one."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pandas as pd
import pytest
from openai import OpenAI

from service.config import Settings
from service.prompts import prompt_id
from service.providers.replay import NoRecording, ReplayProvider
from tests.servers import ServiceServer

RECORDED = "What is the capital of France?"
UNRECORDED = "Summarize the plot of a novel nobody has written."
CHEAP, DEAR = "mistralai/mixtral-8x7b-instruct", "openai/gpt-4-1106-preview"


@pytest.fixture(scope="module")
def outcomes_path(tmp_path_factory):
    rows = [
        # prompt_id, model, response, input_tokens, output_tokens, cost_usd
        (prompt_id(RECORDED), CHEAP, "Paris.", 8, 2, 0.0000042),
        (prompt_id(RECORDED), DEAR, "The capital of France is Paris.", 8, 8, 0.00032),
        (prompt_id("Another question"), CHEAP, "", 3, 0, 0.0),  # no text: not a recording
        (prompt_id("A third question"), DEAR, "An answer without counts.", None, None, None),
    ]
    columns = ["prompt_id", "model", "response", "input_tokens", "output_tokens", "cost_usd"]
    frame = pd.DataFrame(rows, columns=columns).astype(
        {"input_tokens": "Int64", "output_tokens": "Int64", "cost_usd": "Float64"}
    )
    path = tmp_path_factory.mktemp("replay") / "outcomes.parquet"
    frame.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def replay(outcomes_path):
    return ReplayProvider.from_outcomes(outcomes_path)


def user(text):
    return {"messages": [{"role": "user", "content": text}]}


def test_only_answers_with_text_are_recordings(replay):
    assert replay.models_for(user(RECORDED)["messages"]) == {CHEAP, DEAR}
    assert replay.models_for(user("Another question")["messages"]) == set()
    assert replay.serves(CHEAP) and replay.serves(DEAR) and not replay.serves("x/unknown")


def test_complete_returns_the_recorded_text_tokens_and_cost(replay):
    completion = asyncio.run(replay.complete(DEAR, user(RECORDED)))
    assert completion.body["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert completion.body["model"] == DEAR
    assert completion.usage.prompt_tokens == 8 and completion.usage.completion_tokens == 8
    assert completion.usage.upstream_cost_usd == pytest.approx(0.00032)


def test_missing_counts_are_estimated_and_the_cost_left_to_the_catalog(replay):
    completion = asyncio.run(replay.complete(DEAR, user("A third question")))
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    assert completion.usage.upstream_cost_usd is None


def test_the_stream_rebuilds_the_recorded_text_and_ends_with_usage(replay):
    async def collect():
        return [chunk async for chunk in replay.stream(DEAR, user(RECORDED))]

    chunks = asyncio.run(collect())
    bodies = [json.loads(c.data) for c in chunks]
    text = "".join(b["choices"][0]["delta"].get("content", "") for b in bodies if b["choices"])
    assert text == "The capital of France is Paris."
    assert bodies[-1]["choices"] == [] and bodies[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-1].usage is not None and chunks[-1].usage.upstream_cost_usd == 0.00032


def test_an_unrecorded_prompt_or_model_is_a_503_that_says_how_to_configure(replay):
    for model, text in ((CHEAP, UNRECORDED), ("anthropic/claude-2", RECORDED)):
        with pytest.raises(NoRecording) as raised:
            asyncio.run(replay.complete(model, user(text)))
        assert raised.value.status == 503 and "OPENROUTER_API_KEY" in str(raised.value)


@pytest.fixture(scope="module")
def service(outcomes_path, tmp_path_factory):
    database = tmp_path_factory.mktemp("ledger") / "ledger.db"
    settings = Settings(
        upstream="replay",
        replay_outcomes_path=outcomes_path,
        database_url=f"sqlite:///{database}",
        admin_key="sb-admin-replay-test",
        store_content=True,
    )
    with ServiceServer(settings) as server:
        yield server


def test_the_service_routes_among_the_recorded_models_and_stores_content_if_asked(service):
    client = OpenAI(base_url=f"{service.url}/v1", api_key=service.create_key("r"), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="switchboard/auto", messages=user(RECORDED)["messages"]
    )
    completion = raw.parse()
    assert completion.model in (CHEAP, DEAR)
    expected = {CHEAP: 0.0000042, DEAR: 0.00032}[completion.model]
    assert completion.usage.cost == pytest.approx(expected)
    record = httpx.get(
        f"{service.url}/v1/requests/{raw.headers['x-switchboard-request-id']}",
        headers={"Authorization": f"Bearer {client.api_key}"},
    ).json()
    assert {c["model"] for c in record["candidates"]} == {CHEAP, DEAR}
    # SWITCHBOARD_STORE_CONTENT=true keeps the prompt and the answer in the ledger
    assert record["prompt"] == RECORDED
    assert record["response"] == completion.choices[0].message.content


def test_the_service_refuses_unrecorded_prompts_with_a_clear_503(service):
    client = OpenAI(base_url=f"{service.url}/v1", api_key=service.create_key("r"), max_retries=0)
    for model in ("switchboard/auto", CHEAP):
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(model=model, messages=user(UNRECORDED)["messages"])
        assert raised.value.status_code == 503
        assert "OPENROUTER_API_KEY" in raised.value.message
