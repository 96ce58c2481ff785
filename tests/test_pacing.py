"""Budget pacing: simulated over a day of traffic, the controller lands spend on the budget at
the period's end, where the unpaced router runs out early and refuses the rest of the day."""

from __future__ import annotations

import numpy as np
import pytest

from service.pacing import Traffic, chosen_cost, pace

DEFAULT = 0.7
MODELS_COST = [0.0002, 0.001, 0.004, 0.02]  # cheap to dear, USD per request


def day_of_traffic(seed: int = 0, per_minute: int = 2) -> list[list[dict]]:
    """Requests with per-model P(pass): dearer models pass more often, prompts vary."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(24 * 60 * per_minute):
        difficulty = rng.uniform(0, 1)
        p_pass = np.clip(
            np.array([0.95, 0.85, 0.75, 0.65]) + difficulty * np.array([-0.7, -0.45, -0.2, 0.3]),
            0,
            1,
        )
        requests.append(
            [
                {"model": f"m{i}", "p_pass": float(p), "expected_cost_usd": c}
                for i, (p, c) in enumerate(zip(p_pass, MODELS_COST, strict=True))
            ]
        )
    return requests


def simulate(requests: list[list[dict]], limit: float, paced: bool) -> dict[str, float]:
    """Serve a day minute by minute under a hard cap; the controller runs every 30 minutes."""
    seconds_per_request = 86_400 / len(requests)
    spent, served, refused, passed = 0.0, 0, 0, 0.0
    threshold = DEFAULT
    first_refusal = None
    for i, candidates in enumerate(requests):
        now = i * seconds_per_request
        if paced and i % int(1800 / seconds_per_request) == 0 and i > 0:
            history = requests[max(0, i - 500) : i]
            traffic = Traffic(1 / seconds_per_request, history, 1.0, 0.0, 1.0)
            state = pace(spent, limit, 86_400 - now, traffic, DEFAULT)
            threshold = state["threshold"] if state["threshold"] is not None else DEFAULT
        cost = chosen_cost(candidates, threshold)
        if spent + cost > limit:
            refused += 1
            first_refusal = first_refusal if first_refusal is not None else now / 86_400
            continue
        spent += cost
        served += 1
        chosen = next(c for c in candidates if c["expected_cost_usd"] == cost)
        passed += chosen["p_pass"]
    return {
        "spent": spent,
        "served": served,
        "refused": refused,
        "first_refusal": first_refusal if first_refusal is not None else 1.0,
        "expected_passes": passed,
    }


def test_pacing_lands_on_the_budget_instead_of_running_out_early():
    requests = day_of_traffic()
    unconstrained = sum(chosen_cost(c, DEFAULT) for c in requests)
    limit = 0.6 * unconstrained  # the default threshold would need 1.67x this budget
    unpaced = simulate(requests, limit, paced=False)
    paced = simulate(requests, limit, paced=True)
    assert unpaced["first_refusal"] < 0.75 and unpaced["refused"] > 0.2 * len(requests)
    assert paced["refused"] < 0.01 * len(requests)
    assert 0.9 * limit <= paced["spent"] <= limit
    # answering everyone with cheaper models beats answering 60-70 % with the default ones
    assert paced["expected_passes"] > 1.2 * unpaced["expected_passes"]


def test_an_ample_budget_is_left_alone():
    requests = day_of_traffic(per_minute=1)
    history = requests[:500]
    traffic = Traffic(1 / 60, history, 1.0, 0.0, 1.0)
    state = pace(0.0, 10 * sum(chosen_cost(c, DEFAULT) for c in requests), 86_400, traffic, DEFAULT)
    assert state["status"] == "on_track" and state["threshold"] is None


def test_an_overspent_budget_goes_to_the_floor_and_says_so():
    traffic = Traffic(1.0, day_of_traffic(per_minute=1)[:100], 1.0, 0.0, 1.0)
    state = pace(0.99, 1.0, 86_400, traffic, DEFAULT)
    assert state["status"] == "over_pace" and state["threshold"] == pytest.approx(0.05)


def test_named_model_traffic_and_cost_calibration_enter_the_projection():
    history = day_of_traffic(per_minute=1)[:200]
    base = pace(0.0, 1e9, 3600, Traffic(1.0, history, 1.0, 0.0, 1.0), DEFAULT)
    doubled = pace(0.0, 1e9, 3600, Traffic(1.0, history, 1.0, 0.0, 2.0), DEFAULT)
    assert doubled["projected_at_default_usd"] == pytest.approx(
        2 * base["projected_at_default_usd"]
    )
    mixed = pace(0.0, 1e9, 3600, Traffic(1.0, history, 0.5, 0.01, 1.0), DEFAULT)
    expected = 3600 * (0.5 * base["projected_at_default_usd"] / 3600 + 0.5 * 0.01)
    assert mixed["projected_at_default_usd"] == pytest.approx(expected)
