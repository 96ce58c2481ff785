"""Off-policy estimates on simulated logs with a known truth: their 95 % intervals cover the
truth about 95 % of the time for policies near and far from the logged one, estimates the data
cannot support are withheld, and the parts (effective sample size, strata, reward model, policy
replays, version selection) do what training/offpolicy.py says (seeded, so deterministic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.routing.exploration import explore
from training.offpolicy import (
    MIN_EFFECTIVE_SAMPLE_SIZE,
    NOT_ENOUGH_OVERLAP,
    LoggedArrays,
    OffPolicy,
    Z,
    evaluate_logged,
    evaluate_policy,
    heuristic_policy,
    logged_policy,
    one_router_version,
    threshold_policy,
)
from training.offpolicy_check import Tally, build_world, coverage

MODELS = ["cheap", "mid", "dear"]
COST = {"cheap": 0.001, "mid": 0.004, "dear": 0.02}
SLOPES = np.array([0.8, 0.4, 0.1])


def pass_probabilities(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """True pass probabilities of n requests for each model, and the router's noisy view."""
    difficulty = rng.uniform(size=(n, 1))
    true_p = np.clip(np.array([0.95, 0.9, 0.97]) - difficulty * SLOPES, 0, 1)
    return true_p, np.clip(true_p + rng.normal(0, 0.05, true_p.shape), 0, 1)


def synthetic_log(
    rng: np.random.Generator, n: int, rate: float, start: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Requests logged by a threshold-0.7 router exploring at ``rate``; the true pass
    probability of every (request, model) is known."""
    true_p, noisy = pass_probabilities(rng, n)
    rows = []
    for i in range(n):
        candidates = [
            {"model": m, "p_pass": float(p), "expected_cost_usd": COST[m]}
            for m, p in zip(MODELS, noisy[i], strict=True)
        ]
        decision = next((c["model"] for c in candidates if c["p_pass"] >= 0.7), "dear")
        served, propensity = explore(f"r{start + i}", decision, MODELS, rate)
        j = MODELS.index(served)
        rows.append(
            {
                "id": f"r{start + i}",
                "candidates": candidates,
                "served_model": served,
                "propensity": propensity,
                "explored": served != decision,
                "quality": float(rng.uniform() < true_p[i, j]),
                "cost_usd": COST[served],
                "threshold": 0.7,
            }
        )
    return pd.DataFrame(rows), true_p


def population_value(threshold: float) -> float:
    """The threshold policy's mean true pass probability over the request population."""
    true_p, noisy = pass_probabilities(np.random.default_rng(12345), 200_000)
    clears = noisy >= threshold
    choice = np.where(clears.any(axis=1), clears.argmax(axis=1), noisy.argmax(axis=1))
    return float(true_p[np.arange(len(choice)), choice].mean())


def test_intervals_cover_the_truth_of_a_threshold_variant_on_synthetic_logs():
    rng = np.random.default_rng(7)
    target = threshold_policy(0.5)
    truth = population_value(0.5)
    tallies = {"ips": Tally(), "dr": Tally()}
    for run in range(200):
        log, _ = synthetic_log(rng, 300, 0.3, run * 1000)
        estimate = evaluate_policy(log, target(log))["quality"]
        for method, tally in tallies.items():
            tally.add(estimate[method], truth, MIN_EFFECTIVE_SAMPLE_SIZE)
    for tally in tallies.values():
        assert tally.missed_withheld == 0 and tally.judged >= 150
        assert tally.coverage is not None and 0.90 <= tally.coverage <= 0.99


@pytest.fixture(scope="module")
def world(outcomes):
    return build_world(outcomes)


def test_coverage_on_the_outcomes_table_for_near_and_far_policies(world):
    """The issue's check: the logged router, another threshold, the heuristic and a second
    router, 200 seeded replications at 500 and 2,000 requests (exploration 0.2)."""
    assert set(world.choices) == {"logged", "threshold 0.9", "heuristic", "second router"}
    agreement = {p: float((c == world.choices["logged"]).mean()) for p, c in world.choices.items()}
    assert agreement["heuristic"] < 0.2 and agreement["threshold 0.9"] < 0.2  # far policies
    assert 0.5 < agreement["second router"] < 1.0  # a router that mostly agrees
    report = coverage(world, (500, 2000), replications=200, exploration=0.2, seed=0)
    cells = [c for c in report["cells"] if c["metric"] == "quality"]
    assert len(cells) == 4 * 2 * 2
    for cell in cells:
        where = (cell["size"], cell["policy"], cell["method"], cell["coverage"])
        assert cell["missed_withheld"] == 0, where  # withheld only below the minimum ESS
        if cell["size"] == 500 and cell["policy"] in ("threshold 0.9", "heuristic"):
            # about 10 effective requests: withheld instead of a misleading number
            assert cell["withheld"] == cell["replications"], where
            continue
        assert cell["estimated"] >= 100, where  # enough given to measure the coverage
        assert 0.90 <= cell["coverage"] <= 0.99, where


def test_without_exploration_the_logged_policy_is_its_observed_traffic():
    rng = np.random.default_rng(1)
    log, _ = synthetic_log(rng, 500, 0.0, 0)
    result = evaluate_policy(log, logged_policy()(log))
    assert result["agreement"] == 1.0 and (log["propensity"] == 1.0).all()
    assert result["explored"] == 0 and result["explored_agreeing"] == 0
    assert result["cost_usd"]["ips"]["value"] == pytest.approx(log["cost_usd"].mean())
    # quality counts z^2 / 2 pseudo-requests at 0 and at 1 (Agresti-Coull): a shift of < 0.005
    n, mean = len(log), log["quality"].mean()
    assert result["quality"]["ips"]["value"] == pytest.approx((n * mean + Z * Z / 2) / (n + Z * Z))
    assert result["quality"]["ips"]["effective_sample_size"] == pytest.approx(n)
    # a router that disagrees cannot be judged without exploring: withheld, not a number
    other = evaluate_policy(log, threshold_policy(0.3)(log))
    assert other["agreement"] < 1
    for metric in ("quality", "cost_usd"):
        for method in ("ips", "dr"):
            estimate = other[metric][method]
            assert estimate["value"] is None and estimate["ci_low"] is None
            assert estimate["reason"] == NOT_ENOUGH_OVERLAP
            assert estimate["effective_sample_size"] == 0.0


def arrays(served, propensity, decision, quality, explored=None, p_pass=None):
    n = len(served)
    served, decision = np.array(served), np.array(decision)
    return LoggedArrays(
        models=MODELS,
        served=served,
        propensity=np.array(propensity, dtype=float),
        decision=decision,
        explored=served != decision if explored is None else np.array(explored),
        p_pass=np.full((n, 3), 0.8) if p_pass is None else p_pass,
        expected_cost=np.tile([COST[m] for m in MODELS], (n, 1)),
        quality=np.array(quality, dtype=float),
        cost=np.array([COST[MODELS[j]] for j in served]),
        fold=np.arange(n) % 2,
    )


def test_the_effective_sample_size_is_kish_over_the_strata_the_estimate_weights():
    # 40 requests: the logged router decided "cheap" everywhere, exploration served 10 "dear"
    served = [0] * 30 + [2] * 10
    propensity = [0.8 + 0.2 / 3] * 30 + [0.2 / 3] * 10
    log = arrays(served, propensity, [0] * 40, [1.0, 0.0] * 20)
    estimator = OffPolicy(log, min_effective_sample_size=5)
    # "dear" everywhere departs from every decision: one stratum, ten equal weights
    far = estimator.evaluate(np.full(40, 2))["quality"]["ips"]
    assert far["effective_sample_size"] == pytest.approx(10.0)
    assert far["explored_agreeing"] == 10
    assert far["value"] is not None and 0 <= far["ci_low"] < far["ci_high"] <= 1
    # "dear" on the last 20 requests only: two strata of 20 requests each, 20 and 10 supporting
    mixed = np.array([0] * 20 + [2] * 20)
    estimate = estimator.evaluate(mixed)["quality"]["ips"]
    assert estimate["effective_sample_size"] == pytest.approx(1 / (0.5**2 / 20 + 0.5**2 / 10))
    # the plain Kish formula over all weights gives another number; the strata's is the one used
    w = (np.array(served) == mixed) / np.array(propensity)
    assert w.sum() ** 2 / (w**2).sum() != pytest.approx(estimate["effective_sample_size"])
    # below the minimum: withheld with the reason, its size still reported
    strict = OffPolicy(log).evaluate(np.full(40, 2))["quality"]["dr"]
    assert strict["value"] is None and strict["reason"] == NOT_ENOUGH_OVERLAP
    assert strict["effective_sample_size"] == pytest.approx(10.0)


def test_intervals_stay_inside_the_metric_range():
    log = arrays([0] * 60, [1.0] * 60, [0] * 60, [1.0] * 60)  # every answer passed
    result = OffPolicy(log).evaluate(np.zeros(60, dtype=int))
    for method in ("ips", "dr"):
        quality = result["quality"][method]
        assert quality["ci_high"] <= 1.0 and quality["ci_low"] < 1.0  # not a zero-width [1, 1]
        assert quality["ci_low"] <= quality["value"] <= quality["ci_high"]
        assert result["cost_usd"][method]["ci_low"] >= 0.0


def test_the_reward_model_is_fitted_on_feedback_not_the_routers_own_p_pass():
    rng = np.random.default_rng(3)
    n = 2000
    served = rng.integers(0, 3, n)
    passed = (rng.uniform(size=n) < 0.5).astype(float)  # the router says 0.8: it is 0.5
    log = arrays(served, np.full(n, 1 / 3), served, passed)
    predicted = OffPolicy(log).predicted_quality(served)
    assert abs(float(predicted.mean()) - 0.5) < 0.03


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="propensities"):
        arrays([0, 1], [0.0, 1.0], [0, 1], [1.0, 0.0])
    log = arrays([0, 1], [1.0, 1.0], [0, 1], [1.0, 0.0])
    with pytest.raises(ValueError, match="at least 1"):
        OffPolicy(log, min_effective_sample_size=0)
    with pytest.raises(ValueError, match="choices for"):
        OffPolicy(log).evaluate(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_policy(1.5)
    frame = pd.DataFrame({"candidates": [[]], "served_model": ["cheap"], "propensity": [None]})
    with pytest.raises(ValueError, match="propensity"):
        evaluate_policy(frame, ["cheap"])


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


def test_the_heuristic_runs_by_each_requests_own_threshold_among_priced_candidates():
    candidates = [{"model": m, "p_pass": 0.5, "expected_cost_usd": COST[m]} for m in MODELS]
    unpriced = [*candidates, {"model": "unpriced", "p_pass": 0.99, "expected_cost_usd": None}]
    log = pd.DataFrame(
        {
            "prompt": ["Hi", "Hi"],
            "candidates": [unpriced, unpriced],
            "threshold": [0.5, 0.999],  # a short prompt: cheap clears 0.5, nothing clears 0.999
            "answer_value_usd": [None, None],
        }
    )
    assert heuristic_policy()(log) == ["cheap", "dear"]
    assert heuristic_policy(0.5)(log) == ["cheap", "cheap"]
    with pytest.raises(ValueError, match="SWITCHBOARD_STORE_CONTENT"):
        heuristic_policy()(log.assign(prompt=[None, "Hi"]))


def test_estimates_use_one_router_versions_requests():
    rng = np.random.default_rng(5)
    log, _ = synthetic_log(rng, 90, 0.3, 0)
    log["router"] = "learned"
    log["router_version"] = ["old"] * 30 + ["new"] * 60
    log["created_at"] = pd.date_range("2026-01-01", periods=90, freq="h", tz="UTC")
    newest, selection = one_router_version(log)
    assert selection["router_version"] == "new" and len(newest) == 60
    assert selection["left_out"] == {"learned@old": 30}
    older, selection = one_router_version(log, "old")
    assert len(older) == 30 and selection["left_out"] == {"learned@new": 60}
    with pytest.raises(ValueError, match="logged: new, old"):
        one_router_version(log, "missing")
    with pytest.raises(ValueError, match="no logged"):
        one_router_version(log.iloc[:0])
    both = evaluate_logged(newest, {"logged": logged_policy(), "t": threshold_policy(0.5)})
    assert set(both) == {"logged", "t"} and both["logged"]["requests"] == 60
