"""``switchboard calibrate`` end to end, offline: the service in front of the fake upstream in judge
mode (grades depend on the answering model), prompts answered and graded through the service,
the outcomes file written, the models onboarded in the order of their grades."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from service.routing.learned import LearnedRouter
from switchboard.cli import app
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, upstream_settings

ADMIN = "sb-admin-calibrate"
GOOD, POOR, JUDGE = "anthropic/claude-sonnet-4.5", "openai/gpt-4o-mini", "openai/gpt-4o"
PROMPTS = [f"Question {i}: explain topic number {i} in two sentences." for i in range(14)]


def calibrate(env, *args):
    return CliRunner(env=env).invoke(app, ["calibrate", *args], catch_exceptions=False)


@pytest.fixture
def setup(tmp_path, open_router, database_url):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    router_dir = tmp_path / "router"
    shutil.copytree(open_router, router_dir)
    env = {
        "SWITCHBOARD_ADMIN_KEY": ADMIN,
        "SWITCHBOARD_ROUTER_DIR": str(router_dir),
        "SWITCHBOARD_RUNS_DIR": str(tmp_path / "runs"),
        "SWITCHBOARD_SNAPSHOTS_DIR": str(tmp_path / "snapshots"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    return tmp_path, prompts, router_dir, env


def run_service(upstream, database_url, router_dir):
    settings = upstream_settings(upstream.url, database_url, ADMIN, router_dir=router_dir)
    return ServiceServer(settings)


def calibrated_gap(setup, database_url, grades, name):
    """Calibrate GOOD and POOR under a judge giving ``grades``; the onboarded router's mean
    P(pass) of GOOD minus POOR on new prompts."""
    tmp, prompts, router_dir, env = setup
    router_copy = tmp / f"router-{name}"
    shutil.copytree(router_dir, router_copy)
    env = {**env, "SWITCHBOARD_ROUTER_DIR": str(router_copy)}
    output = tmp / f"calibration-{name}.jsonl"
    prices = catalog_prices([GOOD, POOR, JUDGE])
    with (
        FakeUpstreamServer(prices, judge_grades=grades) as upstream,
        run_service(upstream, database_url, router_copy) as service,
    ):
        args = ["--models", f"{GOOD},{POOR}", "--judge", JUDGE, "--prompts", str(prompts)]
        args += ["--url", service.url, "--output", str(output)]
        result = calibrate(env, *args)
        assert result.exit_code == 0, result.output
        calls = len(upstream.state.requests)
        assert calls == 2 * len(PROMPTS) * 2  # each answer, and its grading
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        assert len(rows) == 2 * len(PROMPTS)
        assert {r["model"]: r["quality"] for r in rows} == {m: g / 10 for m, g in grades.items()}
        assert all(r["cost_usd"] > 0 for r in rows)
        rerun = calibrate(env, *args)  # every pair already graded: nothing is sent
        assert rerun.exit_code == 0 and len(upstream.state.requests) == calls
        admin = {"Authorization": f"Bearer {ADMIN}"}
        ledger = httpx.get(f"{service.url}/v1/requests?limit=1000", headers=admin).json()["data"]
        purposes = {(r["requested_model"] == JUDGE, r["purpose"]) for r in ledger}
        assert purposes == {(True, "judge"), (False, None)}  # the grading calls are tagged
    router = LearnedRouter.load(router_copy)
    assert router.metadata["kind"] == "onboard"
    assert router.graded_prompts(GOOD) == router.graded_prompts(POOR) == len(PROMPTS)
    p = router.p_pass(["Explain topic number 99 in two sentences.", "Hi"], [GOOD, POOR])
    return float(np.mean(p[:, 0] - p[:, 1]))


def test_models_are_onboarded_in_the_order_of_their_grades(setup, database_url):
    """The judge's order comes out in P(pass); a judge that grades both alike gives none (so a
    constant judge fails this test)."""
    graded = calibrated_gap(setup, database_url, {GOOD: 9, POOR: 2}, "graded")
    flat = calibrated_gap(setup, database_url, {GOOD: 6, POOR: 6}, "flat")
    assert graded > 0.05 and graded > flat + 0.05, (graded, flat)


def test_nothing_is_sent_to_a_replay_service_or_over_the_cost_cap(setup, tmp_path):
    from service.config import Settings

    tmp, prompts, router_dir, env = setup
    replay = Settings(
        upstream="replay", database_url=f"sqlite:///{tmp / 'replay.db'}", admin_key=ADMIN
    )
    with ServiceServer(replay) as service:
        args = ["--models", GOOD, "--judge", JUDGE, "--prompts", str(prompts), "--url", service.url]
        refused = calibrate(env, *args)
        assert refused.exit_code == 2 and "replay" in refused.output
    prices = catalog_prices([GOOD, JUDGE])
    with (
        FakeUpstreamServer(prices, judge_grades={}) as upstream,
        run_service(upstream, f"sqlite:///{tmp / 'cap.db'}", router_dir) as service,
    ):
        args = ["--models", GOOD, "--judge", JUDGE, "--url", service.url, "--sample", "50"]
        over = calibrate(env, *args, "--max-cost-usd", "0.000001")
        assert over.exit_code == 2 and "over --max-cost-usd" in over.output
        assert upstream.state.requests == []
    no_key = calibrate({**env, "SWITCHBOARD_ADMIN_KEY": ""}, "--models", GOOD, "--judge", JUDGE)
    assert no_key.exit_code == 2 and "SWITCHBOARD_ADMIN_KEY" in no_key.output
