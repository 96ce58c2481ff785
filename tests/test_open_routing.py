"""Routing among what the upstream serves now: a factorized router behind the fake upstream,
whose listing leaves out one of the router's models and whose answers call another "not a
valid model ID"; models named in allowed_models route on their prior; uncalibrated models
only explore. Runs on SQLite, and on PostgreSQL too where SWITCHBOARD_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from service.catalog import Catalog
from service.routing.learned import LearnedRouter
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.conftest import LEFT_OUT
from tests.servers import ServiceServer, ledger_row, upstream_settings

ADMIN = "admin-open-routing"
PROMPT = "Explain how a hash map handles collisions."


@pytest.fixture(scope="module")
def served_models(open_router):
    catalog = Catalog.load()
    router = LearnedRouter.load(open_router)
    priced = [m for m in router.models if m in catalog and catalog.get(m).priced and "/" in m]
    assert len(priced) >= 4
    return priced


@pytest.fixture(scope="module")
def upstream(served_models):
    # the upstream no longer serves the first router model: not listed, and refused if named
    prices = catalog_prices([*served_models[1:], LEFT_OUT, "anthropic/claude-sonnet-4.5"])
    with FakeUpstreamServer(prices) as server:
        yield server


@pytest.fixture(scope="module")
def service(upstream, database_url, open_router, tmp_path_factory):
    router_dir = tmp_path_factory.mktemp("served") / "router"
    shutil.copytree(open_router, router_dir)
    settings = upstream_settings(
        upstream.url,
        database_url,
        ADMIN,
        router_dir=router_dir,
        breaker_failures=1000,
        upkeep_interval_s=0.3,
    )
    with ServiceServer(settings) as server:
        deadline = time.monotonic() + 10  # the listing is read at start
        while not server.app_state().availability.has_listing:
            assert time.monotonic() < deadline, "the listing was not recorded"
            time.sleep(0.05)
        yield server


def chat(service, body, key=ADMIN):
    return httpx.post(
        f"{service.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": PROMPT}], **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def record_of(service, response):
    return ledger_row(service, response, ADMIN)


def test_auto_never_routes_to_a_model_the_upstream_does_not_list(service, served_models):
    delisted = served_models[0]
    for _ in range(5):
        answer = chat(service, {"model": "switchboard/auto"})
        assert answer.status_code == 200, answer.text
        row = record_of(service, answer)
        assert row["served_model"] != delisted
        assert delisted not in [c["model"] for c in row["candidates"]]
        assert {"model": delisted, "reason": "the upstream's model listing leaves it out"} in (
            row["left_out"]
        )
    listed = httpx.get(
        f"{service.url}/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()["data"]
    entry = next(m for m in listed if m["id"] == delisted)
    assert entry["switchboard"]["not_served_because"]


def test_a_not_valid_model_answer_takes_the_model_out_at_once(service, upstream, served_models):
    """A model the listing still shows but the upstream refuses: marked on the first refusal,
    never called again."""
    victim = served_models[1]
    with upstream.state.lock:
        upstream.state.prices.pop(victim)  # now answers 400 "... is not a valid model ID"
    try:
        upstream.state.requests.clear()
        first = chat(service, {"switchboard": {"allowed_models": [victim]}})
        assert first.status_code == 502, first.text
        again = chat(service, {"switchboard": {"allowed_models": [victim]}})
        assert again.status_code == 503 and "not a valid model" in again.text
        for _ in range(4):
            assert chat(service, {"model": "switchboard/auto"}).status_code == 200
        calls = [e for e in upstream.state.requests if e["model"] == victim]
        assert len(calls) == 1  # the one call that found out
        assert "not a valid model" in service.app_state().availability.unavailable(victim)
    finally:
        with upstream.state.lock:
            upstream.state.prices[victim] = catalog_prices([victim])[victim]


def test_a_priced_model_without_outcomes_routes_on_its_prior_when_named(service):
    answer = chat(service, {"switchboard": {"allowed_models": ["anthropic/claude-sonnet-4.5"]}})
    assert answer.status_code == 200, answer.text
    row = record_of(service, answer)
    (candidate,) = row["candidates"]
    assert candidate["model"] == "anthropic/claude-sonnet-4.5"
    assert candidate["graded_prompts"] == 0 and candidate["calibrated"] is False
    assert 0 < candidate["p_pass"] < 1
    assert answer.headers["x-switchboard-p-pass"] == f"{candidate['p_pass']:.4f}"
    unknown = chat(service, {"switchboard": {"allowed_models": ["vendor/never-heard-of"]}})
    assert unknown.status_code == 422
    assert "no catalog entry" in unknown.json()["error"]["message"]


def test_uncalibrated_models_only_explore_and_follow_under_the_default_policy(service, tmp_path):
    """A model onboarded from 12 graded prompts (fewer than the 25 the default policy asks):
    scored and offered as a fallback, never chosen by the rule."""
    from tests.test_onboard import graded
    from training.pipeline import onboard_version

    path = tmp_path / "few.jsonl"
    graded(LEFT_OUT, 12).to_json(path, orient="records", lines=True)
    router_dir = service.settings.router_dir
    _, written, _ = onboard_version(
        path, tmp_path / "runs", router_dir, Catalog.load(), tmp_path / "snap", log_mlflow=False
    )
    deadline = time.monotonic() + 20  # picked up live by upkeep
    while service.app_state().gateway.router.version != written.version:
        assert time.monotonic() < deadline, "the onboarded router was not picked up"
        time.sleep(0.1)
    router = LearnedRouter.load(router_dir)
    minimum = service.settings.calibrated_min_prompts
    for prompt in [PROMPT, "hi", "Write a SQL query that finds duplicate emails."]:
        decision = httpx.post(
            f"{service.url}/v1/route",
            json={"prompt": prompt},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ).json()
        by_model = {c["model"]: c for c in decision["candidates"]}
        assert by_model[LEFT_OUT] == {**by_model[LEFT_OUT], "graded_prompts": 12}
        assert by_model[LEFT_OUT]["calibrated"] is False
        assert by_model[LEFT_OUT]["decidable"] is False
        assert decision["model"] != LEFT_OUT
        assert decision["fallback_order"][-1] == LEFT_OUT  # after every calibrated candidate
        for candidate in decision["candidates"]:
            assert candidate["graded_prompts"] == router.graded_prompts(candidate["model"])
            assert candidate["calibrated"] == (candidate["graded_prompts"] >= minimum)


def test_models_to_explore_get_traffic_on_their_prior(database_url, open_router, served_models):
    """A catalog model with no graded answers, named in SWITCHBOARD_EXPLORE_MODELS: a candidate
    the rule does not choose, which exploration sends traffic to (so feedback can reach it)."""
    newcomer = "anthropic/claude-sonnet-4.5"
    with FakeUpstreamServer(catalog_prices([*served_models[:2], newcomer])) as small:
        settings = upstream_settings(
            small.url,
            database_url,
            ADMIN,
            router_dir=open_router,
            explore_models=[newcomer],
            exploration_rate=1.0,  # every request explores: uniform over the three served
        )
        with ServiceServer(settings) as server:
            deadline = time.monotonic() + 10
            while not server.app_state().availability.has_listing:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            served = []
            for i in range(30):
                body = {"messages": [{"role": "user", "content": f"{PROMPT} {i}"}]}
                answer = chat(server, body)
                assert answer.status_code == 200, answer.text
                row = record_of(server, answer)
                entry = next(c for c in row["candidates"] if c["model"] == newcomer)
                assert entry["graded_prompts"] == 0 and entry["decidable"] is False
                served.append(row["served_model"])
    assert newcomer in served  # exploration reached it (missing it 30 times: p < 1e-5)
