"""Online A/B experiments and exploration in the running service: stable arms (by tenant, user
or request), per-arm results with the balance, intervals and tests that respect the unit,
the tenant minimum, stop rules for quality and cost, and exploration kept out of the arms."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import numpy as np
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from service.config import Settings, to_async_url
from service.experiments import (
    Arm,
    Experiment,
    ExperimentStore,
    Served,
    mean_interval,
    parse_arms,
    stop_reason,
    summarize,
    welch_difference,
    welch_less,
)
from service.ledger import Ledger, Principal
from service.routing.exploration import explore
from switchboard.cli import app
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, postgres_database, upstream_settings

ADMIN = "sb-admin-experiments"
MODELS = json.loads((Settings().router_dir / "router.json").read_text())["models"]


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
    first = [experiment.assign(p, None, f"r{i}").name for i, p in enumerate(tenants)]
    # tenant unit: neither the user nor the request moves a tenant
    assert first == [experiment.assign(p, "someone", "other").name for p in tenants]
    assert 0.66 < first.count("champion") / len(first) < 0.74
    by_user = Experiment(1, "exp", tuple(arms), "user", 0.05, 10, "running", None)
    assert by_user.assign(tenants[0], "u1", "r1") == by_user.assign(tenants[1], "u1", "r2")


def test_the_request_unit_draws_each_request_even_for_a_single_tenant():
    arms = tuple(parse_arms("champion:70,heuristic:30"))
    by_request = Experiment(1, "exp", arms, "request", 0.05, 10, "running", None)
    solo = Principal(1, "solo", None)
    drawn = [by_request.assign(solo, "same-user", f"sbr-{i}").name for i in range(4000)]
    assert 0.67 < drawn.count("champion") / len(drawn) < 0.73
    # the request id decides, not the tenant or the user
    assert by_request.assign(solo, None, "sbr-7") == by_request.assign(
        Principal(2, "other", None), "someone", "sbr-7"
    )
    by_tenant = dataclasses.replace(by_request, unit="tenant")
    assert len({by_tenant.assign(solo, None, f"sbr-{i}").name for i in range(200)}) == 1


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


def test_intervals_stay_inside_the_metric_range():
    few = mean_interval([1.0, 1.0, 1.0, 0.0], 0.0, 1.0)
    assert few["ci_high"] == 1.0 and few["ci_low"] >= 0.0 and few["n"] == 4
    cheap = mean_interval([0.0, 0.0, 0.0, 0.001], 0.0)
    assert cheap["ci_low"] == 0.0
    wide = welch_difference([1.0, 0.0], [0.0, 1.0], 0.0, 1.0)
    assert wide["ci_low"] == -1.0 and wide["ci_high"] == 1.0  # a t with 1 dof is huge
    assert welch_difference([1.0], [0.0, 1.0], 0.0, 1.0)["ci_low"] is None


def clustered(rng, tenants_per_arm, requests_per_tenant):
    """Feedback and cost that depend on the tenant (its prompts, its raters) more than on the
    arm: what requests of one tenant look like."""
    served = []
    for arm in ("champion", "heuristic"):
        for t in range(tenants_per_arm):
            quality = rng.uniform(0.1, 0.9)
            cost = rng.lognormal(math.log(1e-4), 1.0)
            for _ in range(requests_per_tenant):
                served.append(
                    Served(
                        arm,
                        f"tenant:{arm}-{t}",
                        cost * rng.lognormal(0.0, 0.2),
                        10.0,
                        0.0,
                        ratings=[float(rng.random() < quality)],
                    )
                )
    return served


def as_requests(served):
    """The same requests as if each were its own unit (what a request-level test assumes)."""
    return [dataclasses.replace(s, unit=f"request:{i}") for i, s in enumerate(served)]


def experiment_of(unit, margin=0.05, min_feedback=10, max_requests=None):
    arms = tuple(parse_arms("champion:50,heuristic:50"))
    return Experiment(
        1, "exp", arms, unit, margin, min_feedback, "running", None, max_requests=max_requests
    )


def excludes_zero(test):
    return test["ci_low"] > 0 or test["ci_high"] < 0


def test_unit_means_keep_the_error_rate_that_requests_as_if_independent_lose():
    rng = np.random.default_rng(18)
    by_tenant, by_request = experiment_of("tenant"), experiment_of("request")
    false = {"tenant": [0, 0], "request": [0, 0]}
    replications = 200
    for _ in range(replications):  # no true difference between the arms
        served = clustered(rng, tenants_per_arm=6, requests_per_tenant=30)
        for unit, experiment, data in (
            ("tenant", by_tenant, served),
            ("request", by_request, as_requests(served)),
        ):
            summary = summarize(experiment, data)
            test = summary["results"][1]["test"]
            false[unit][0] += excludes_zero(test["feedback_diff"])
            false[unit][1] += excludes_zero(test["cost_diff_usd"])
            for arm in summary["results"]:
                assert 0.0 <= arm["feedback"]["ci_low"] <= arm["feedback"]["ci_high"] <= 1.0
                assert arm["cost_per_request_usd"]["ci_low"] >= 0.0
            assert -1.0 <= test["feedback_diff"]["ci_low"] <= test["feedback_diff"]["ci_high"] <= 1
    tenant_rates = [count / replications for count in false["tenant"]]
    request_rates = [count / replications for count in false["request"]]
    assert all(rate <= 0.1 for rate in tenant_rates), tenant_rates  # about 5 %
    assert all(rate >= 0.25 for rate in request_rates), request_rates  # far above 5 %


def test_the_cluster_aware_interval_is_wider_than_the_naive_one_on_clustered_data():
    served = clustered(np.random.default_rng(3), tenants_per_arm=8, requests_per_tenant=40)
    tenant = summarize(experiment_of("tenant"), served)
    naive = summarize(experiment_of("request"), as_requests(served))
    assert tenant["method"] == "welch_unit_means" and naive["method"] == "welch_requests"
    for metric in ("feedback_diff", "cost_diff_usd"):
        cluster_test, naive_test = tenant["results"][1]["test"], naive["results"][1]["test"]
        width = cluster_test[metric]["ci_high"] - cluster_test[metric]["ci_low"]
        assert width > 2 * (naive_test[metric]["ci_high"] - naive_test[metric]["ci_low"])
    assert [a["units"] for a in tenant["results"]] == [8, 8]
    assert [a["feedback"]["n"] for a in tenant["results"]] == [8, 8]  # one value per tenant
    assert [a["requests"] for a in tenant["results"]] == [320, 320]


def requests_of(arm, qualities, costs, tenants=None):
    return [
        Served(
            arm,
            f"tenant:{tenants[i]}" if tenants else f"request:{arm}-{i}",
            c,
            10.0,
            0.0,
            ratings=[q],
        )
        for i, (q, c) in enumerate(zip(qualities, costs, strict=True))
    ]


def test_stop_rules_for_quality_and_cost():
    rng = np.random.default_rng(5)
    n = 2000
    same_quality = [1.0] * (n * 4 // 5) + [0.0] * (n // 5)  # 0.8 in both arms
    dear, cheap = rng.normal(1e-3, 1e-4, n), rng.normal(5e-4, 5e-5, n)
    # equal quality within the margin, clearly cheaper: decided
    served = requests_of("champion", same_quality, dear) + requests_of(
        "heuristic", same_quality, cheap
    )
    experiment = experiment_of("request")
    summary = summarize(experiment, served)
    reason = stop_reason(experiment, summary)
    assert reason is not None and reason.startswith("decided: heuristic against champion")
    assert summary["results"][1]["test"]["cost_diff_usd"]["ci_high"] < 0
    # the same data but the cost no different: not decided, until the maximum sample
    similar = requests_of("champion", same_quality, dear) + requests_of(
        "heuristic", same_quality, rng.permutation(dear)
    )
    assert stop_reason(experiment, summarize(experiment, similar)) is None
    capped = experiment_of("request", max_requests=2 * n)
    assert stop_reason(capped, summarize(capped, similar)).startswith("reached max_requests")
    # a worse arm stops the experiment even though it is cheaper; not before min_feedback
    worse = requests_of("champion", same_quality[::20], dear[:100]) + requests_of(
        "heuristic", [1.0, 0.0] * 50, cheap[:100]
    )
    reason = stop_reason(experiment, summarize(experiment, worse))
    assert reason is not None and "heuristic is worse than champion" in reason
    patient = experiment_of("request", min_feedback=101)
    assert stop_reason(patient, summarize(patient, worse)) is None
    # the same requests under unit tenant, four tenants an arm (three rate 1.0, one 0.2):
    # four units an arm cannot tell equal quality from a difference of the margin
    tenants = [i * 4 // n for i in range(n)]
    by_tenant = experiment_of("tenant")
    clustered_served = requests_of("champion", same_quality, dear, tenants) + requests_of(
        "heuristic", same_quality, cheap, [t + 4 for t in tenants]
    )
    assert stop_reason(by_tenant, summarize(by_tenant, clustered_served)) is None


@pytest.fixture(scope="module")
def service(database_url):
    with FakeUpstreamServer(catalog_prices(MODELS)) as upstream:
        settings = upstream_settings(
            upstream.url, database_url, ADMIN, budget_refresh_s=0, exploration_rate=0.3
        )
        with ServiceServer(settings) as server:
            yield server


@contextmanager
def fresh_service(database_url: str, name: str, **settings) -> Iterator[ServiceServer]:
    """A service on a ledger of its own (same backend as ``database_url``), for tests that
    count tenants."""
    with ExitStack() as stack:
        if database_url.startswith("sqlite"):
            url = database_url.removesuffix(".db") + f"-{name}.db"
        else:
            url = stack.enter_context(
                postgres_database(os.environ["SWITCHBOARD_TEST_POSTGRES_URL"])
            )
        upstream = stack.enter_context(FakeUpstreamServer(catalog_prices(MODELS)))
        values = {"budget_refresh_s": 0, **settings}
        yield stack.enter_context(
            ServiceServer(upstream_settings(upstream.url, url, ADMIN, **values))
        )


def admin(service, method, path, **kwargs):
    return httpx.request(
        method, f"{service.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs
    )


def start(service, name, **fields):
    body = {"name": name, "arms": [{"router": "champion"}, {"router": "heuristic"}], **fields}
    return admin(service, "POST", "/v1/admin/experiments", json=body)


def chat(service, key, prompt, score=None):
    """One auto-routed request (rated ``score`` if given); its ledger record."""
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(
        f"{service.url}/v1/chat/completions",
        json={"model": "switchboard/auto", "messages": [{"role": "user", "content": prompt}]},
        headers=headers,
    )
    response.raise_for_status()
    request_id = response.headers["x-switchboard-request-id"]
    if score is not None:
        httpx.post(
            f"{service.url}/v1/feedback",
            json={"request_id": request_id, "score": score},
            headers=headers,
        ).raise_for_status()
    return httpx.get(f"{service.url}/v1/requests/{request_id}", headers=headers).json()


def check_stop(service):
    async def check():
        ledger = Ledger.connect(to_async_url(service.settings.database_url))
        try:
            return await ExperimentStore(ledger.engine, 0).check_stop()
        finally:
            await ledger.close()

    return asyncio.run(check())


def test_an_experiment_splits_tenants_reports_arms_and_stops_a_worse_one(service):
    refused = start(service, "x", arms=[{"router": "champion"}, {"router": "challenger"}])
    assert refused.status_code == 400 and "challenger" in refused.json()["error"]["message"]
    bad_unit = start(service, "x", unit="conversation")
    assert bad_unit.status_code == 400 and bad_unit.json()["error"]["param"] == "unit"
    started = start(service, "learned-vs-heuristic", min_feedback=5, force=True)
    assert started.status_code == 201, started.text
    assert started.json()["forced"] is True  # no tenant has a key yet
    again = start(service, "second", unit="request")
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
            # exploration (0.3 in this service) is off inside the arms by default
            assert record["propensity"] == 1.0 and record["explored"] is False
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
    assert results["method"] == "welch_unit_means"
    assert results["balance"] == {
        "unit": "tenant",
        "units": 8,
        "requests": 32,
        "sample_ratio_p": results["balance"]["sample_ratio_p"],
    }
    assert champion["units"] + heuristic["units"] == 8
    assert champion["requests"] == 4 * champion["units"]
    assert champion["explored"] == heuristic["explored"] == 0
    assert champion["feedback"]["mean"] == 1.0 and heuristic["feedback"]["mean"] == 0.0
    assert heuristic["test"]["p_worse_beyond_margin"] < 0.05
    assert champion["cost_per_request_usd"]["mean"] > 0
    # cost compared like quality: the heuristic (the cheapest model here) costs less
    cost = heuristic["test"]["cost_diff_usd"]
    assert cost["ci_low"] <= cost["diff"] <= cost["ci_high"] < 0
    assert any("by force" in w for w in results["warnings"])

    reason = check_stop(service)
    assert reason and "heuristic is worse than champion" in reason
    stopped = admin(service, "GET", "/v1/experiments/learned-vs-heuristic").json()
    assert stopped["status"] == "stopped" and stopped["stop_reason"] == reason
    # outside an experiment the service explores at its rate again
    key = admin(service, "POST", "/v1/admin/keys", json={"tenant": "after"}).json()["key"]
    after = [chat(service, key, f"after {i}") for i in range(20)]
    assert all(r["arm"] is None for r in after)
    assert any(r["explored"] and r["propensity"] < 0.5 for r in after)
    assert admin(service, "POST", "/v1/admin/experiments/none/stop").status_code == 404


def test_one_tenant_is_refused_under_unit_tenant_and_balanced_under_unit_request(database_url):
    with fresh_service(database_url, "one", exploration_rate=0.2) as service:
        key = service.create_key("solo")
        refused = start(service, "solo-tenant")
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "unit"
        assert error["code"] == "too_few_tenants"
        assert "at least 20 tenants" in error["message"] and "1 tenant has" in error["message"]
        assert "unit request" in error["message"] and "force" in error["message"]

        forced = start(service, "solo-tenant", force=True, min_feedback=2)
        assert forced.status_code == 201 and forced.json()["tenants_at_start"] == 1
        records = [chat(service, key, f"solo {i}", score=1.0) for i in range(12)]
        assert len({r["arm"] for r in records}) == 1  # a single tenant: one arm
        result = admin(service, "GET", "/v1/experiments/solo-tenant").json()
        assert sorted(a["requests"] for a in result["results"]) == [0, 12]
        assert sorted(a["units"] for a in result["results"]) == [0, 1]
        assert any(
            "single tenant sends all its traffic to one arm" in w for w in result["warnings"]
        )
        assert result["results"][1]["test"]["feedback_diff"]["ci_low"] is None
        assert check_stop(service) is None  # nothing to compare, nothing decided
        assert admin(service, "POST", "/v1/admin/experiments/solo-tenant/stop").status_code == 200

        assert start(service, "solo-request", unit="request", min_feedback=5).status_code == 201
        scores = {"solo-request:champion": 1.0, "solo-request:heuristic": 0.5}
        records = [chat(service, key, f"solo request {i}") for i in range(40)]
        for record in records:
            httpx.post(
                f"{service.url}/v1/feedback",
                json={"request_id": record["id"], "score": scores[record["arm"]]},
                headers={"Authorization": f"Bearer {key}"},
            ).raise_for_status()
        result = admin(service, "GET", "/v1/experiments/solo-request").json()
        champion, heuristic = result["results"]
        assert result["method"] == "welch_requests" and result["warnings"] == []
        assert champion["requests"] + heuristic["requests"] == 40
        assert min(champion["requests"], heuristic["requests"]) >= 8  # both arms, near 50/50
        assert champion["units"] == champion["requests"]  # each request is its own unit
        assert result["balance"]["sample_ratio_p"] > 0.001
        assert heuristic["feedback"]["n"] == heuristic["requests"]
        quality = heuristic["test"]["feedback_diff"]
        assert quality["diff"] == pytest.approx(-0.5) and quality["ci_high"] < 0
        assert heuristic["test"]["cost_diff_usd"]["ci_high"] < 0
        assert check_stop(service).startswith("arm heuristic is worse")

        # the command line: the same refusal, --force, and the balance in `show`
        runner = CliRunner(env={"SWITCHBOARD_DATABASE_URL": service.settings.database_url})
        cli = runner.invoke(app, ["experiment", "start", "--name", "cli-ab"])
        assert cli.exit_code != 0 and "at least 20 tenants" in cli.output
        cli = runner.invoke(
            app, ["experiment", "start", "--name", "cli-ab", "--force", "--max-requests", "50"]
        )
        assert cli.exit_code == 0, cli.output
        assert json.loads(cli.stdout)["forced"] is True
        shown = runner.invoke(app, ["experiment", "show", "solo-request"])
        assert shown.exit_code == 0, shown.output
        assert "unit request: 40 requests; intervals and tests over requests" in shown.stdout
        assert "heuristic - champion: feedback -0.500" in shown.stdout
        assert runner.invoke(app, ["experiment", "stop", "cli-ab"]).exit_code == 0


def test_nine_tenants_are_refused_under_the_minimum_and_split_by_request(database_url):
    settings = {"exploration_rate": 0.3, "experiment_exploration": True}
    with fresh_service(database_url, "nine", experiment_min_tenants=10, **settings) as service:
        # names whose hash puts tenants in both arms of "nine-tenant" (a fixed hash)
        keys = {f"team-{i}": service.create_key(f"team-{i}") for i in range(9)}
        refused = start(service, "nine-tenant")
        assert refused.status_code == 400
        message = refused.json()["error"]["message"]
        assert "at least 10 tenants" in message and "9 tenants have" in message  # the setting

        assert start(service, "nine-tenant", force=True, min_feedback=2).status_code == 201
        tenant_arm, rated = {}, {}
        for i, (tenant, key) in enumerate(keys.items()):
            for j in range(10):  # quality depends on the tenant, not the arm
                record = chat(service, key, f"{tenant} {j}", score=i / 8)
                assert tenant_arm.setdefault(tenant, record["arm"]) == record["arm"]
                rated.setdefault(record["arm"], []).append(i / 8)
        result = admin(service, "GET", "/v1/experiments/nine-tenant").json()
        control, other = result["results"]
        assert control["units"] + other["units"] == 9 and min(control["units"], other["units"]) >= 2
        assert control["feedback"]["n"] == control["units"]  # one value per tenant
        # the tenant-level interval is wider than Welch over the same requests as if independent
        naive = welch_difference(
            rated[f"nine-tenant:{other['arm']}"], rated[f"nine-tenant:{control['arm']}"], 0.0, 1.0
        )
        cluster = other["test"]["feedback_diff"]
        assert cluster["diff"] == pytest.approx(naive["diff"])  # ten requests from each tenant
        assert cluster["ci_high"] - cluster["ci_low"] > naive["ci_high"] - naive["ci_low"]
        assert 0.0 <= control["feedback"]["ci_low"] <= control["feedback"]["ci_high"] <= 1.0
        # exploration turned on inside the arms: counted per arm and warned about
        assert control["explored"] + other["explored"] > 0
        assert any("exploration sent" in w for w in result["warnings"])
        assert admin(service, "POST", "/v1/admin/experiments/nine-tenant/stop").status_code == 200

        assert start(service, "nine-request", unit="request").status_code == 201
        arms_of = {tenant: set() for tenant in keys}
        for tenant, key in keys.items():
            for j in range(16):
                arms_of[tenant].add(chat(service, key, f"{tenant} again {j}")["arm"])
        assert all(len(arms) == 2 for arms in arms_of.values())  # every tenant in both arms
        result = admin(service, "GET", "/v1/experiments/nine-request").json()
        counts = [a["requests"] for a in result["results"]]
        assert sum(counts) == 144 and min(counts) >= 0.35 * 144
        assert result["balance"] == {
            "unit": "request",
            "units": 144,
            "requests": 144,
            "sample_ratio_p": result["balance"]["sample_ratio_p"],
        }
