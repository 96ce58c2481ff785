"""Online A/B experiments and exploration in the running service: stable arms, per-arm results
with intervals and a test, automatic stopping, and propensities recorded for exploration."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from openai import OpenAI

from service.config import Settings
from service.experiments import Arm, Experiment, parse_arms, welch_less
from service.ledger import Principal
from service.routing.exploration import explore
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, upstream_settings

ADMIN = "sb-admin-experiments"


def test_arms_parse_and_assignment_is_stable_and_weighted():
    arms = parse_arms("champion:70,heuristic:30")
    assert [(a.name, a.router, a.weight) for a in arms] == [
        ("champion", "champion", 70.0),
        ("heuristic", "heuristic", 30.0),
    ]
    assert parse_arms("a=champion,b=champion:2")[1] == Arm("b", "champion", 2.0)
    for bad in (
        "champion:50",
        "champion:1,champion:1",
        "champion:1,oracle:1",
        "champion:0,heuristic",
    ):
        with pytest.raises(ValueError):
            parse_arms(bad)
    experiment = Experiment(1, "exp", tuple(arms), "tenant", 0.05, 10, "running", None)
    tenants = [Principal(i, f"t{i}", None) for i in range(2000)]
    first = [experiment.assign(p, None).name for p in tenants]
    assert first == [experiment.assign(p, "someone").name for p in tenants]  # tenant unit
    assert 0.66 < first.count("champion") / len(first) < 0.74
    by_user = Experiment(1, "exp", tuple(arms), "user", 0.05, 10, "running", None)
    assert by_user.assign(tenants[0], "u1") == by_user.assign(tenants[1], "u1")


def test_exploration_draws_with_the_propensity_it_records():
    models = ["a", "b", "c", "d"]
    draws = [explore(f"req-{i}", "a", models, 0.2) for i in range(20_000)]
    share_a = sum(m == "a" for m, _ in draws) / len(draws)
    assert share_a == pytest.approx(0.8 + 0.2 / 4, abs=0.01)
    assert all(p == pytest.approx(0.85) for m, p in draws if m == "a")
    assert all(p == pytest.approx(0.05) for m, p in draws if m != "a")
    assert explore("x", "a", models, 0.0) == ("a", 1.0)
    assert explore("x", "a", ["a"], 0.5) == ("a", 1.0)


def test_welch_flags_only_a_clearly_worse_arm():
    good, bad = [1.0, 0.9, 1.0, 0.8] * 20, [0.2, 0.4, 0.3, 0.1] * 20
    assert welch_less(bad, good, 0.05) < 0.001
    assert welch_less(good, good, 0.05) > 0.5
    assert welch_less([1.0], good, 0.05) is None


@pytest.fixture(scope="module")
def service(database_url):
    models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
    with FakeUpstreamServer(catalog_prices(models)) as upstream:
        settings = upstream_settings(
            upstream.url, database_url, ADMIN, budget_refresh_s=0, exploration_rate=0.3
        )
        with ServiceServer(settings) as server:
            yield server


def admin(service, method, path, **kwargs):
    return httpx.request(
        method, f"{service.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs
    )


def test_an_experiment_splits_tenants_reports_arms_and_stops_a_worse_one(service):
    refused = admin(
        service,
        "POST",
        "/v1/admin/experiments",
        json={"name": "x", "arms": [{"router": "champion"}, {"router": "challenger"}]},
    )
    assert refused.status_code == 400 and "challenger" in refused.json()["error"]["message"]
    started = admin(
        service,
        "POST",
        "/v1/admin/experiments",
        json={
            "name": "learned-vs-heuristic",
            "arms": [{"router": "champion"}, {"router": "heuristic"}],
            "min_feedback": 5,
        },
    )
    assert started.status_code == 201, started.text
    again = admin(
        service,
        "POST",
        "/v1/admin/experiments",
        json={"name": "second", "arms": [{"router": "champion"}, {"router": "heuristic"}]},
    )
    assert again.status_code == 400  # one at a time
    arms_seen: dict[str, set[str]] = {}
    for t in range(8):
        key = admin(service, "POST", "/v1/admin/keys", json={"tenant": f"ab{t}"}).json()["key"]
        client = OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0)
        for _ in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model="switchboard/auto", messages=[{"role": "user", "content": f"hi {t}"}]
            )
            record = httpx.get(
                f"{service.url}/v1/requests/{raw.headers['x-switchboard-request-id']}",
                headers={"Authorization": f"Bearer {key}"},
            ).json()
            arms_seen.setdefault(f"ab{t}", set()).add(record["arm"])
            assert 0 < record["propensity"] <= 1
            router = raw.headers["x-switchboard-router"].split("@")[0]
            assert router == ("heuristic" if record["arm"].endswith(":heuristic") else "learned")
            # the heuristic arm is rated badly, the champion well
            score = 0.0 if router == "heuristic" else 1.0
            httpx.post(
                f"{service.url}/v1/feedback",
                json={"request_id": record["id"], "score": score},
                headers={"Authorization": f"Bearer {key}"},
            ).raise_for_status()
    assert all(len(arms) == 1 for arms in arms_seen.values())  # a tenant stays on its arm
    assert len(set().union(*arms_seen.values())) == 2
    results = admin(service, "GET", "/v1/experiments/learned-vs-heuristic").json()
    champion, heuristic = results["results"]
    assert champion["requests"] + heuristic["requests"] == 32
    assert champion["feedback"]["mean"] == 1.0 and heuristic["feedback"]["mean"] == 0.0
    assert heuristic["test"]["p_worse_beyond_margin"] < 0.05
    assert champion["cost_per_request_usd"]["mean"] > 0

    async def check():
        from service.config import to_async_url
        from service.experiments import ExperimentStore
        from service.ledger import Ledger

        ledger = Ledger.connect(to_async_url(service.settings.database_url))
        try:
            return await ExperimentStore(ledger.engine, 0).check_stop()
        finally:
            await ledger.close()

    reason = asyncio.run(check())
    assert reason and "heuristic" in reason
    stopped = admin(service, "GET", "/v1/experiments/learned-vs-heuristic").json()
    assert stopped["status"] == "stopped" and stopped["stop_reason"] == reason
    explored = admin(service, "GET", "/v1/requests", params={"limit": 100}).json()["data"]
    assert any(r["propensity"] < 0.5 for r in explored)  # some requests explored
    assert admin(service, "POST", "/v1/admin/experiments/none/stop").status_code == 404
