"""Off-policy estimates on synthetic logs with a known truth: unbiased, and their 95 % intervals
cover the truth about 95 % of the time (seeded, so the test is deterministic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.routing.exploration import explore
from training.offpolicy import evaluate_policy, logged_policy, threshold_policy

MODELS = ["cheap", "mid", "dear"]
COST = {"cheap": 0.001, "mid": 0.004, "dear": 0.02}


def synthetic_log(
    rng: np.random.Generator, n: int, rate: float, start: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Requests logged by a threshold-0.7 router exploring at ``rate``; the true pass
    probability of every (request, model) is known."""
    rows, truth = [], []
    for i in range(n):
        difficulty = rng.uniform()
        true_p = np.clip(np.array([0.95, 0.9, 0.97]) - difficulty * np.array([0.8, 0.4, 0.1]), 0, 1)
        noisy = np.clip(true_p + rng.normal(0, 0.05, 3), 0, 1)  # the router's imperfect P(pass)
        candidates = [
            {"model": m, "p_pass": float(p), "expected_cost_usd": COST[m]}
            for m, p in zip(MODELS, noisy, strict=True)
        ]
        decision = next((c["model"] for c in candidates if c["p_pass"] >= 0.7), "dear")
        served, propensity = explore(f"r{start + i}", decision, MODELS, rate)
        j = MODELS.index(served)
        rows.append(
            {
                "candidates": candidates,
                "served_model": served,
                "propensity": propensity,
                "quality": float(rng.uniform() < true_p[j]),
                "cost_usd": COST[served],
                "threshold": 0.7,
            }
        )
        truth.append(true_p)
    return pd.DataFrame(rows), np.array(truth)


def true_value(log: pd.DataFrame, truth: np.ndarray, choices: list[str]) -> float:
    return float(np.mean([truth[i, MODELS.index(c)] for i, c in enumerate(choices)]))


def test_dr_and_ips_intervals_cover_the_truth_at_their_level():
    rng = np.random.default_rng(7)
    target = threshold_policy(0.5)
    hits = {"ips": 0, "dr": 0}
    runs = 200
    for run in range(runs):
        log, truth = synthetic_log(rng, 300, 0.3, run * 1000)
        choices = target(log)
        estimate = evaluate_policy(log, choices)["quality"]
        value = true_value(log, truth, choices)
        for method in hits:
            hits[method] += estimate[method]["ci_low"] <= value <= estimate[method]["ci_high"]
    assert 0.90 <= hits["ips"] / runs <= 0.99
    assert 0.90 <= hits["dr"] / runs <= 0.99


def test_without_exploration_the_logged_policy_is_its_observed_traffic():
    rng = np.random.default_rng(1)
    log, _ = synthetic_log(rng, 500, 0.0, 0)
    result = evaluate_policy(log, logged_policy()(log))
    assert result["agreement"] == 1.0 and (log["propensity"] == 1.0).all()
    assert result["cost_usd"]["ips"]["value"] == pytest.approx(log["cost_usd"].mean())
    assert result["quality"]["ips"]["value"] == pytest.approx(log["quality"].mean())
    assert result["quality"]["dr"]["value"] == pytest.approx(log["quality"].mean())
    other = evaluate_policy(log, threshold_policy(0.3)(log))
    assert other["agreement"] < 1  # a router that disagrees cannot be judged without exploring


def test_the_logged_policy_replays_each_request_by_the_rule_that_decided_it():
    candidates = [
        {"model": m, "p_pass": p, "expected_cost_usd": COST[m]}
        for m, p in zip(MODELS, [0.75, 0.8, 0.95], strict=True)
    ]
    log = pd.DataFrame(
        {
            "candidates": [candidates] * 3,
            # threshold 0.7: cheap; worth $0.1: 0.074, 0.076, 0.075 -> mid; worth $1: dear
            "threshold": [0.7, None, None],
            "answer_value_usd": [None, 0.1, 1.0],
        }
    )
    assert logged_policy()(log) == ["cheap", "mid", "dear"]
