"""``switchboard eval --logged`` on a ledger with known logged traffic, on SQLite and PostgreSQL:
one router version's requests, the heuristic estimated without ``--router``, every estimate with
its effective sample size and explored requests, withheld estimates, and bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from service.config import to_sync_url
from service.migrate import upgrade
from service.routing.exploration import explore
from service.tables import feedback, requests
from switchboard.cli import app
from tests.ledger_rows import routed_request

CHEAP, MID, DEAR = (
    "mistralai/mistral-7b-instruct-v0.1",
    "mistralai/mixtral-8x7b-instruct",
    "openai/gpt-4-1106-preview",
)
MODELS = [CHEAP, MID, DEAR]
COST = {CHEAP: 0.001, MID: 0.004, DEAR: 0.02}
START = datetime(2026, 3, 1, tzinfo=UTC)
PROMPTS = ["Hi there", "Write a python function that sorts a list", "Why is the sky blue?"]


def logged_rows(version: str, n: int, offset: int, rng: np.random.Generator):
    rows, scores = [], []
    for i in range(n):
        k = offset + i
        difficulty = rng.uniform()
        p = np.clip(np.array([0.95, 0.9, 0.97]) - difficulty * np.array([0.8, 0.4, 0.1]), 0, 1)
        candidates = [
            {"model": m, "p_pass": float(q), "expected_cost_usd": COST[m]}
            for m, q in zip(MODELS, p, strict=True)
        ]
        decision = next((c["model"] for c in candidates if c["p_pass"] >= 0.7), DEAR)
        served, propensity = explore(f"q{k}", decision, MODELS, 0.3)
        at = START + timedelta(minutes=k)
        prompt = PROMPTS[k % len(PROMPTS)]
        row = routed_request(f"q{k}", at, version, 0.7, candidates, decision, served,
                             propensity, COST[served], prompt)  # fmt: skip
        rows.append(row)
        passed = float(rng.uniform() < p[MODELS.index(served)])
        scores.append({"request_id": f"q{k}", "tenant_id": 1, "score": passed, "created_at": START})
    return rows, scores


@pytest.fixture(scope="module")
def ledger(database_url):
    upgrade(database_url)
    rng = np.random.default_rng(11)
    old, old_scores = logged_rows("old-version", 40, 0, rng)
    new, new_scores = logged_rows("new-version", 900, 1000, rng)
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.begin() as conn:
        conn.execute(requests.insert(), old + new)
        conn.execute(feedback.insert(), old_scores + new_scores)
    engine.dispose()
    return database_url


def run(ledger, monkeypatch, *args):
    monkeypatch.setenv("SWITCHBOARD_DATABASE_URL", ledger)
    return CliRunner().invoke(app, ["eval", "--logged", *map(str, args)])


def test_json_reports_one_router_version_and_the_heuristic_without_a_router(ledger, monkeypatch):
    result = run(ledger, monkeypatch, "--json", "--threshold", "0.5", "--threshold", "0.95")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["router_version"], report["requests"]) == ("new-version", 900)
    assert report["left_out"] == {"learned@old-version": 40}
    assert report["min_effective_sample_size"] == 30
    assert set(report["policies"]) == {"logged", "threshold 0.5", "threshold 0.95", "heuristic"}
    for name, policy in report["policies"].items():
        assert policy["requests"] == 900 and policy["explored"] > 100
        for metric in ("quality", "cost_usd"):
            for method in ("ips", "dr"):
                estimate = policy[metric][method]
                assert {"effective_sample_size", "explored_agreeing", "reason"} <= set(estimate)
                if estimate["value"] is None:
                    assert estimate["reason"] == "not enough overlap", name
                    assert estimate["effective_sample_size"] < 30
                elif metric == "quality":
                    assert 0 <= estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"] <= 1
    logged = report["policies"]["logged"]["quality"]["dr"]
    assert logged["value"] is not None and logged["effective_sample_size"] > 500
    assert report["policies"]["heuristic"]["quality"]["dr"]["explored_agreeing"] > 0


def test_an_older_version_and_withheld_estimates_in_the_table(ledger, monkeypatch):
    result = run(ledger, monkeypatch, "--router-version", "old-version", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["requests"] == 40 and report["left_out"] == {"learned@new-version": 900}
    result = run(ledger, monkeypatch, "--min-ess", "5000")
    assert result.exit_code == 0, result.output
    assert "900 logged requests of learned@new-version" in result.stdout
    assert "40 of other router versions left out" in result.stdout
    assert "ESS" in result.stdout and "withheld: not enough overlap" in result.stdout
    assert "heuristic" in result.stdout


def test_bad_input_is_a_one_line_error(ledger, monkeypatch):
    for args, message in (
        (("--router-version", "nope"), "logged: new-version, old-version"),
        (("--min-ess", "0"), "--min-ess"),
        (("--threshold", "1.5"), "--threshold must be in [0, 1]"),
    ):
        result = run(ledger, monkeypatch, *args)
        assert result.exit_code == 2, args
        assert message in result.output and "Traceback" not in result.output


def test_another_learned_router_beside_the_heuristic(ledger, monkeypatch, small_router):
    directory, summary = small_router
    result = run(ledger, monkeypatch, "--router", directory, "--json")
    assert result.exit_code == 0, result.output
    policies = json.loads(result.stdout)["policies"]
    assert set(policies) == {"logged", "heuristic", f"router {summary['version']}"}
    chosen = policies[f"router {summary['version']}"]["quality"]["dr"]
    assert chosen["effective_sample_size"] > 0 and "explored_agreeing" in chosen
