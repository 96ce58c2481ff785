"""The promotion gate's statistics (training/gate.py) and the held-out sets traffic is kept out
of (training/traffic.py): verdicts with their minimum detectable difference, its 80 % power,
the doubly robust terms of the traffic's test requests, and which prompts count as held out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from service.prompts import prompt_id
from service.routing.exploration import explore
from service.routing.learned import LearnedRouter
from training import datasets
from training.gate import (
    COSTLIER,
    NOT_WORSE,
    PROBABLY_WORSE,
    QUALITY_WORSE,
    TOO_FEW,
    decide,
    detectable,
    traffic_terms,
)
from training.offpolicy import router_policy
from training.traffic import gate_requests, held_out_ids, held_out_removed, split_of


def paired(n, rng, delta=0.0, agree=0.8, p_old=0.7, cost_ratio=0.8):
    """Per-prompt passes and costs of two routers that choose alike on ``agree`` of prompts
    and, elsewhere, pass with probability ``p_old + delta``."""
    q_old = (rng.uniform(size=n) < p_old).astype(float)
    same = rng.uniform(size=n) < agree
    q_new = np.where(same, q_old, (rng.uniform(size=n) < p_old + delta).astype(float))
    c_old = rng.uniform(1.0, 2.0, size=n)
    return q_new, q_old, c_old * cost_ratio, c_old


def test_a_failing_gate_says_worse_or_too_few_data_with_its_minimum_detectable_difference():
    rng = np.random.default_rng(0)
    few = decide(*paired(500, rng), margin=0.005, confidence=0.95)
    assert not few.passed and few.quality_verdict == TOO_FEW
    assert few.reason.startswith("too few data to tell")
    assert few.quality_mdd > few.margin and str(few.prompts_needed) != "None"
    assert few.prompts_needed > 500 * (few.quality_mdd / 0.005) ** 2 - 1
    # the MDD is (z_0.95 + z_0.8) = 2.486 bootstrap standard errors
    assert few.quality_mdd == pytest.approx(2.486 * few.quality_se, rel=1e-3)
    assert few.quality_mdd == pytest.approx(detectable(few.quality_se, 0.95))

    worse = decide(*paired(4000, rng, delta=-0.15), margin=0.005, confidence=0.95)
    assert not worse.passed and worse.quality_verdict == QUALITY_WORSE
    assert worse.quality_diff_high < 0 and worse.reason.startswith("worse")
    assert "too few" not in worse.reason
    # more prompts, a smaller detectable difference: about 1 / sqrt(n)
    assert worse.quality_mdd < few.quality_mdd / 2

    equal = decide(*paired(4000, rng), margin=0.05, confidence=0.95)
    assert equal.passed and equal.quality_verdict == NOT_WORSE, equal.reason
    assert equal.reason.startswith("passed") and equal.cost_verdict == "cheaper"


def test_probably_worse_when_the_data_suffice_but_the_estimate_came_out_low():
    """Not significantly lower, yet enough data (MDD <= margin): this happens when the margin
    is 2.5 to 3.3 standard errors and the difference about -1.4 of them."""
    n, lower, higher = 2000, 126, 104  # prompts where the challenger fails / passes alone
    q_old = np.r_[np.ones(lower), np.zeros(higher), np.ones(n - lower - higher)]
    q_new = np.r_[np.zeros(lower), np.ones(higher), np.ones(n - lower - higher)]
    cost = np.ones(n)
    se = decide(q_new, q_old, cost * 0.9, cost, 0.005, 0.95).quality_se
    gate = decide(q_new, q_old, cost * 0.9, cost, margin=se / 0.35, confidence=0.95)
    assert gate.quality_diff_high >= 0 and gate.quality_diff_low < -gate.margin
    assert gate.quality_mdd <= gate.margin and gate.quality_verdict == PROBABLY_WORSE
    assert not gate.passed and gate.reason.startswith("probably worse")


def test_the_minimum_detectable_difference_is_passed_with_80_percent_power():
    """An equally good challenger, with the margin set to the data's MDD, passes the quality
    check in about 80 % of samples (the MDD's definition)."""
    rng = np.random.default_rng(1)
    n = 400
    mdd = float(np.mean([decide(*paired(n, rng), 0.005, 0.95).quality_mdd for _ in range(20)]))
    passed = [
        decide(*paired(n, rng), mdd, 0.95, seed=i).quality_verdict == NOT_WORSE for i in range(200)
    ]
    assert 0.7 <= np.mean(passed) <= 0.9, np.mean(passed)


def test_cost_verdicts():
    rng = np.random.default_rng(2)
    dearer = decide(*paired(2000, rng, cost_ratio=1.2), margin=0.5, confidence=0.95)
    assert dearer.cost_verdict == COSTLIER and dearer.reason.startswith("costlier")
    q_new, q_old, _, c_old = paired(30, rng)
    slightly = c_old * np.where(rng.uniform(size=30) < 0.5, 0.6, 1.35)  # noisy, a bit cheaper
    close = decide(q_new, q_old, slightly, c_old, margin=0.5, confidence=0.95)
    if close.cost_change < 0:
        assert close.cost_verdict == TOO_FEW and "too few data to tell whether it is cheaper" in (
            close.reason
        )
    assert close.cost_mdd > abs(close.cost_change) or close.cost_verdict != TOO_FEW


def test_held_out_prompts_are_every_evaluation_set_by_normalized_text(outcomes):
    alpaca = datasets.load_alpaca_eval()
    held = held_out_ids(outcomes, [alpaca])
    by_split = outcomes.drop_duplicates("prompt_id").set_index("prompt_id")
    for source in ("routerbench-subset", "llmrouter", "routerarena", "zeroeval"):
        for split, expected in (("val", True), ("test", True), ("train", False)):
            ids = by_split.index[(by_split["source"] == source) & (by_split["split"] == split)]
            assert {pid in held for pid in ids[:50]} == {expected}, (source, split)
    for source in ("routellm", "zeroeval-gsm8k"):
        assert set(by_split.index[by_split["source"] == source]) <= held
    assert set(alpaca["prompt_id"]) <= held

    test_prompt = by_split[by_split["split"] == "test"]["prompt"].iloc[0]
    train_prompt = by_split[by_split["split"] == "train"]["prompt"].iloc[0]
    alpaca_prompt = alpaca["prompt"].iloc[0]
    traffic = pd.DataFrame(
        {
            # case and spacing differ from the public text; the given id is not the text's
            "prompt": ["  " + test_prompt.upper() + "\n", alpaca_prompt, train_prompt],
            "prompt_id": ["made-up-1", "made-up-2", "made-up-3"],
        }
    )
    kept = held_out_removed(traffic, outcomes, [alpaca])
    assert list(kept["prompt"]) == [train_prompt]


def test_a_prompt_lands_in_one_traffic_split_and_only_test_requests_reach_the_gate():
    prompts = [f"novel prompt number {i}: how do tides work?" for i in range(400)]
    splits = [split_of(p) for p in prompts]
    assert splits == [split_of(p.upper() + "  ") for p in prompts]  # by the normalized text
    share = splits.count("test") / len(splits)
    assert 0.08 < share < 0.22
    held = {prompt_id(prompts[0])}
    logged = pd.DataFrame({"prompt": [*prompts, None], "quality": [1.0] * 399 + [np.nan, 1.0]})
    chosen = gate_requests(logged, held)
    expected = {p for p, s in zip(prompts[1:399], splits[1:399], strict=True) if s == "test"}
    assert set(chosen["prompt"]) == expected


MODELS = [
    "mistralai/mixtral-8x7b-instruct",
    "mistralai/mistral-7b-instruct-v0.1",
    "openai/gpt-4-1106-preview",
]  # cheapest first here
PASS = dict(zip(MODELS, (0.45, 0.7, 0.9), strict=True))


def true_pass(model: str, p_cheapest: float, threshold: float) -> float:
    """The cheapest model passes far more often where its P(pass) clears the threshold: a
    step that the reward model (logistic in the logit of P(pass), one slope for all models)
    cannot fit, so only the propensity weights make the terms unbiased."""
    if model == MODELS[0]:
        return 0.85 if p_cheapest >= threshold else 0.15
    return PASS[model]


COST = dict(zip(MODELS, (0.001, 0.004, 0.02), strict=True))


def synthetic_log(router: LearnedRouter, n: int, seed: int) -> pd.DataFrame:
    """Auto-routed requests logged by ``router`` at its default threshold, exploring at 0.3,
    each answer passing with its model's known rate."""
    rng = np.random.default_rng(seed)
    prompts = [f"synthetic request {seed}-{i}: explain item {i}" for i in range(n)]
    p = router.p_pass(prompts, MODELS)
    threshold = router.default_threshold
    rows = []
    for i, prompt in enumerate(prompts):
        candidates = [
            {"model": m, "p_pass": float(p[i, j]), "expected_cost_usd": COST[m]}
            for j, m in enumerate(MODELS)
        ]
        clearing = [c["model"] for c in candidates if c["p_pass"] >= threshold]
        decision = clearing[0] if clearing else MODELS[int(np.argmax(p[i]))]
        served, propensity = explore(f"r{seed}-{i}", decision, MODELS, 0.3)
        rows.append(
            {
                "id": f"r{seed}-{i}",
                "created_at": datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=i),
                "prompt": prompt,
                "router": "learned",
                "router_version": router.version,
                "threshold": threshold,
                "answer_value_usd": None,
                "candidates": candidates,
                "chosen_model": served,
                "served_model": served,
                "propensity": propensity,
                "explored": served != decision,
                "quality": float(rng.uniform() < true_pass(served, p[i, 0], threshold)),
                "cost_usd": COST[served],
            }
        )
    return pd.DataFrame(rows)


def test_traffic_terms_are_zero_where_the_routers_agree_and_unbiased_where_they_differ(
    small_router,
):
    directory, _ = small_router
    champion = LearnedRouter.load(directory)
    assert set(MODELS) <= set(champion.models)
    # the cheapest model clears the threshold on 40 % of these prompts
    sample = [f"synthetic request 5-{i}: explain item {i}" for i in range(300)]
    champion.default_threshold = float(np.quantile(champion.p_pass(sample, MODELS)[:, 0], 0.6))
    challenger = LearnedRouter.load(directory)
    challenger.default_threshold = 1.0  # the likeliest to pass: they disagree on some requests
    logged = synthetic_log(champion, 3000, seed=5)

    same = traffic_terms(logged, champion, champion)
    assert np.array_equal(same.q_new, same.q_old) and same.info["quality_diff"] == 0

    terms = traffic_terms(logged, champion, challenger)
    new, old = router_policy(challenger)(logged), router_policy(champion)(logged)
    agree = np.array(new) == np.array(old)
    assert 0.05 < 1 - agree.mean() < 0.95
    assert np.array_equal(terms.q_new[agree], terms.q_old[agree])
    p_cheapest = champion.p_pass(list(logged["prompt"]), MODELS)[:, 0]
    t = champion.default_threshold
    truth = np.mean(
        [
            true_pass(a, q, t) - true_pass(b, q, t)
            for a, b, q in zip(new, old, p_cheapest, strict=True)
        ]
    )
    diff = terms.q_new - terms.q_old
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert abs(diff.mean() - truth) <= 4 * se, (diff.mean(), truth, se)
    cost_truth = np.mean([COST[a] for a in new])
    assert terms.c_new.mean() == pytest.approx(cost_truth, rel=0.15)
    assert terms.info["requests"] == 3000 and terms.info["disagreeing"] == int((~agree).sum())
