"""The fake OpenRouter upstream over real HTTP: what the official client parses, every fault."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from openai import OpenAI

from service.catalog import Catalog
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices

PRICED, OTHER = "test/priced", "test/other"
PRICES = {PRICED: (1e-6, 2e-6), OTHER: (3e-7, 0.0)}
AUTH = {"Authorization": "Bearer test-key"}
USER = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "hello there big world"},
]
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def server():
    with FakeUpstreamServer(PRICES) as running:
        yield running


@pytest.fixture(scope="module")
def unpriced():
    with FakeUpstreamServer() as running:
        yield running


@pytest.fixture(autouse=True)
def clean(server):
    for what in ("faults", "requests"):
        httpx.delete(f"{server.control_url}/{what}").raise_for_status()


def client(srv: FakeUpstreamServer, **options) -> OpenAI:
    return OpenAI(base_url=srv.url, api_key="x", max_retries=0, **options)


def chat(srv: FakeUpstreamServer, model: str = PRICED, timeout: float = 5.0, **fields):
    body = {"model": model, "messages": USER, **fields}
    return httpx.post(f"{srv.url}/chat/completions", json=body, headers=AUTH, timeout=timeout)


def fault(srv: FakeUpstreamServer, **spec) -> dict:
    response = httpx.post(f"{srv.control_url}/faults", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def stream_lines(srv: FakeUpstreamServer, **fields) -> tuple[httpx.Response, list[str], Exception]:
    """The SSE lines of a streamed request, and the transport error that ended it, if any."""
    body = {"model": PRICED, "messages": USER, "stream": True, **fields}
    lines: list[str] = []
    error = None
    with httpx.stream(
        "POST", f"{srv.url}/chat/completions", json=body, headers=AUTH, timeout=5
    ) as response:
        try:
            lines.extend(line for line in response.iter_lines() if line)
        except httpx.TransportError as exc:
            error = exc
    return response, lines, error


def events(lines: list[str]) -> list[dict]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


# --- answers, through the official client ------------------------------------------------------


def test_completion_echoes_with_usage_and_cost(server):
    completion = client(server).chat.completions.create(model=PRICED, messages=USER)
    assert completion.id.startswith("gen-") and completion.model == PRICED
    assert completion.model_extra["provider"] == "FakeProvider"
    choice = completion.choices[0]
    assert choice.message.content == "echo: hello there big world"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 5, 11)
    assert usage.model_extra["cost"] == pytest.approx(6 * 1e-6 + 5 * 2e-6)


def test_ids_count_up(server):
    first, second = (chat(server).json()["id"] for _ in range(2))
    assert int(second.removeprefix("gen-")) == int(first.removeprefix("gen-")) + 1


def test_max_tokens_truncates_the_answer(server):
    completion = client(server).chat.completions.create(model=PRICED, messages=USER, max_tokens=3)
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_content_parts_count_as_text(server):
    parts = [{"type": "text", "text": "one two"}, {"type": "image_url", "image_url": {"url": "x"}}]
    body = chat(server, messages=[{"role": "user", "content": parts}]).json()
    assert body["choices"][0]["message"]["content"] == "echo: one two"
    assert body["usage"]["prompt_tokens"] == 2


def test_unpriced_model_has_no_cost(unpriced):
    completion = client(unpriced).chat.completions.create(model="any/model", messages=USER)
    assert completion.usage.total_tokens == 11
    assert "cost" not in (completion.usage.model_extra or {})


def test_unknown_model_is_a_400(server):
    response = chat(server, model="no/such-model")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(model="no/such-model", messages=USER)


def test_streamed_completion_with_usage(server):
    chunks = list(
        client(server).chat.completions.create(
            model=PRICED, messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert words == ["echo:", " hello", " there", " big", " world"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 5
    assert last.usage.model_extra["cost"] == pytest.approx(1.6e-5)
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_completion_without_usage(server):
    chunks = list(client(server).chat.completions.create(model=PRICED, messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello there big world"
    )


def test_stream_wire_format(server):
    response, lines, error = stream_lines(server, stream_options={"include_usage": True})
    assert error is None
    assert response.headers["content-type"] == "text/event-stream"
    assert lines[0] == ": OPENROUTER PROCESSING" and lines[-1] == "data: [DONE]"
    parsed = events(lines)
    assert len(parsed) == 5 + 1 + 1  # a chunk per word, the finish chunk, the usage chunk
    assert parsed[-1]["choices"] == [] and "cost" in parsed[-1]["usage"]


def test_tool_call(server):
    messages = [{"role": "user", "content": "Please call a tool now"}]
    completion = client(server).chat.completions.create(
        model=PRICED, messages=messages, tools=TOOLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {}
    stream = client(server).chat.completions.create(
        model=PRICED, messages=messages, tools=TOOLS, stream=True
    )
    chunks = [c for c in stream if c.choices]
    calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_time"
    assert "".join(t.function.arguments or "" for t in calls) == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tools_without_the_phrase_echo(server):
    body = chat(server, tools=TOOLS).json()
    assert body["choices"][0]["message"]["content"].startswith("echo: ")


def test_missing_or_empty_key_is_a_401(server):
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        body = {"model": PRICED, "messages": USER}
        response = httpx.post(f"{server.url}/chat/completions", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 401
    with pytest.raises(openai.AuthenticationError):
        client(server, default_headers={"Authorization": ""}).chat.completions.create(
            model=PRICED, messages=USER
        )


def test_models_listing(server):
    assert {m.id for m in client(server).models.list()} == set(PRICES)
    data = httpx.get(f"{server.url}/models").json()["data"]
    priced = next(m for m in data if m["id"] == PRICED)
    assert priced["pricing"] == {"prompt": "0.000001", "completion": "0.000002", "request": "0"}
    assert priced["context_length"] > 0 and priced["name"]
    assert next(m for m in data if m["id"] == OTHER)["pricing"]["completion"] == "0"


def test_v1_paths_work_too(server):
    base = server.url.replace("/api/v1", "/v1")
    response = httpx.post(
        f"{base}/chat/completions", json={"model": PRICED, "messages": USER}, headers=AUTH
    )
    assert response.status_code == 200
    assert httpx.get(f"{base}/models").status_code == 200


# --- faults ------------------------------------------------------------------------------------


def test_429_with_retry_after(server):
    fault(server, model=PRICED, fault=429, retry_after=7)
    response = chat(server)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == 429
    assert chat(server).status_code == 200  # times defaults to 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(server, status):
    fault(server, fault=str(status))
    response = chat(server)
    assert response.status_code == status
    assert response.json()["error"]["code"] == status
    assert "retry-after" not in response.headers


def test_times_counts_down_and_forever_lasts(server):
    fault(server, fault="500", times=2)
    assert [chat(server).status_code for _ in range(3)] == [500, 500, 200]
    fault(server, fault="503", times=-1)
    assert [chat(server).status_code for _ in range(3)] == [503, 503, 503]
    assert httpx.get(f"{server.control_url}/faults").json()[0]["times"] == -1
    httpx.delete(f"{server.control_url}/faults")
    assert chat(server).status_code == 200


def test_faults_fire_in_registration_order_and_by_model(server):
    fault(server, model=OTHER, fault="502")
    fault(server, model="*", fault="500")
    fault(server, model=PRICED, fault="503")
    assert chat(server).status_code == 500
    assert chat(server).status_code == 503
    assert chat(server, model=OTHER).status_code == 502
    assert chat(server).status_code == 200


def test_reset_is_a_connection_error(server):
    fault(server, fault="reset")
    with pytest.raises(httpx.TransportError):
        chat(server)
    fault(server, fault="reset")
    with pytest.raises(openai.APIConnectionError):
        client(server).chat.completions.create(model=PRICED, messages=USER)
    assert chat(server).status_code == 200


def test_malformed_is_not_json(server):
    fault(server, fault="malformed")
    response = chat(server)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    fault(server, fault="malformed")
    response, lines, error = stream_lines(server)
    assert error is None and response.status_code == 200
    with pytest.raises(ValueError):
        events(lines)


def test_cut_stream_stops_without_done(server):
    fault(server, fault="cut_stream")
    response, lines, error = stream_lines(server)
    assert response.status_code == 200 and isinstance(error, httpx.RemoteProtocolError)
    assert "data: [DONE]" not in lines
    assert [e["choices"][0]["delta"]["content"] for e in events(lines)] == ["echo:", " hello"]


def test_stream_only_faults_skip_plain_requests(server):
    fault(server, fault="cut_stream")
    assert chat(server).status_code == 200
    assert [f["fault"] for f in httpx.get(f"{server.control_url}/faults").json()] == ["cut_stream"]


def test_error_in_stream(server):
    fault(server, fault="error_in_stream")
    response, lines, error = stream_lines(server)
    assert error is None and response.status_code == 200
    assert "data: [DONE]" not in lines
    first, failed = events(lines)
    assert first["choices"][0]["delta"]["content"] == "echo:"
    assert failed["error"]["code"] == 502 and failed["error"]["message"]
    fault(server, fault="error_in_stream")
    with pytest.raises(openai.APIError):
        list(client(server).chat.completions.create(model=PRICED, messages=USER, stream=True))


def test_timeout_holds_the_answer(server):
    fault(server, fault="timeout", latency_ms=2000)
    with pytest.raises(httpx.ReadTimeout):
        chat(server, timeout=0.3)
    fault(server, fault="timeout", latency_ms=200)
    started = time.monotonic()
    response = chat(server)
    assert response.status_code == 200 and time.monotonic() - started >= 0.2


def test_slow_first_byte(server):
    fault(server, fault="slow_first_byte", latency_ms=300)
    started = time.monotonic()
    _, lines, error = stream_lines(server)
    assert time.monotonic() - started >= 0.3
    assert error is None and lines[-1] == "data: [DONE]"


def test_latency_is_added(server):
    started = time.monotonic()
    chat(server)
    baseline = time.monotonic() - started
    fault(server, fault="none", latency_ms=150, times=-1)
    fault(server, fault="500")  # a latency rule does not hide the faults after it
    started = time.monotonic()
    assert chat(server).status_code == 500
    assert chat(server).status_code == 200
    assert time.monotonic() - started >= 0.3 > baseline


def test_bad_fault_specs_are_400s(server):
    for spec in ({"fault": "explode"}, {"fault": "500", "times": 0}, ["500"], {"bogus": 1}):
        response = httpx.post(f"{server.control_url}/faults", json=spec)
        assert response.status_code == 400 and response.json()["error"]["code"] == 400


def test_request_log(server):
    fault(server, fault="502")
    chat(server, max_tokens=9)
    chat(server, stream=True)
    httpx.post(f"{server.url}/chat/completions", json={"model": PRICED, "messages": USER})
    first, second, third = httpx.get(f"{server.control_url}/requests").json()
    assert (first["model"], first["stream"], first["fault"]) == (PRICED, False, "502")
    assert first["body"]["max_tokens"] == 9
    assert first["headers"]["authorization"] == "<redacted>"
    assert second["stream"] is True and second["fault"] is None
    assert "authorization" not in third["headers"]
    httpx.delete(f"{server.control_url}/requests")
    assert httpx.get(f"{server.control_url}/requests").json() == []


def test_in_process_state_api(server):
    rule = server.state.add_fault(fault="503", times=1)
    assert rule.fault == "503" and chat(server).status_code == 503


# --- running it --------------------------------------------------------------------------------


def test_runs_from_the_cli_with_catalog_prices():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "switchboard", "fake-upstream", "--port", str(port)]
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/api/v1/models").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        listed = {m["id"]: m["pricing"] for m in models["data"]}
        assert set(listed) == set(catalog_prices())
        gpt4 = Catalog.load().get("openai/gpt-4-1106-preview")
        assert float(listed[gpt4.id]["prompt"]) == gpt4.prompt_usd_per_token
    finally:
        process.terminate()
        process.wait(timeout=10)
