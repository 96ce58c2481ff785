"""The routing decision, by one of two rules over the candidates' P(pass) and expected cost.

- threshold rule (the default): the cheapest candidate whose P(pass) reaches the threshold;
  when none reaches it, the one most likely to pass (the cheaper on a tie).
- value rule (when the caller says what a passing answer is worth, ``answer_value_usd``): the
  candidate with the highest expected net value, ``answer_value_usd * P(pass) - expected cost``.

Candidates are the allowed models with a known expected cost at or under the optional cost cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.catalog import Catalog
from service.tokens import estimate_tokens

CLEARS_THRESHOLD = "cheapest_clearing_threshold"
MOST_LIKELY = "most_likely_to_pass"
HIGHEST_VALUE = "highest_expected_value"


class NoCandidateError(ValueError):
    """No model is allowed, priced and under the cost cap for this request."""


@dataclass(frozen=True)
class Candidate:
    model: str
    p_pass: float
    expected_cost_usd: float | None


@dataclass(frozen=True)
class Decision:
    """One routing decision with every candidate's probability and expected cost."""

    model: str
    rule: str
    threshold: float | None  # None under the value rule
    p_pass: float
    expected_cost_usd: float
    candidates: list[Candidate]
    router: str
    answer_value_usd: float | None = None
    ood_score: float | None = None  # how unlike the router's training prompts (0 to 1)


def expected_costs(
    prompts: Sequence[str],
    models: Sequence[str],
    catalog: Catalog,
    max_output_tokens: int | None = None,
    answer_tokens: np.ndarray | None = None,
) -> np.ndarray:
    """Expected USD cost of sending each prompt to each model; NaN for an unpriced model.

    Input tokens are estimated from the prompt; output tokens are ``answer_tokens`` (prompts x
    models: the router's prediction, NaN where it has none) where given, else the model's typical
    answer length from the catalog (the catalog's median for a model with none); either at most
    the request's ``max_output_tokens``.
    """
    prompt_price, completion_price, request_price, typical = np.full((4, len(models)), np.nan)
    for j, model in enumerate(models):
        info = catalog.get(model)
        if info.priced:
            prompt_price[j] = info.prompt_usd_per_token
            completion_price[j] = info.completion_usd_per_token
            request_price[j] = info.request_usd
            typical[j] = info.typical_output_tokens or catalog.median_output_tokens
    output = np.broadcast_to(typical, (len(prompts), len(models)))
    if answer_tokens is not None:
        output = np.where(np.isnan(answer_tokens), output, answer_tokens)
    if max_output_tokens is not None:
        output = np.minimum(output, max_output_tokens)
    input_tokens = np.array([estimate_tokens(p) for p in prompts], dtype=float)[:, None]
    return input_tokens * prompt_price + output * completion_price + request_price


def choose(
    p_pass: np.ndarray,
    cost_usd: np.ndarray,
    threshold: float,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized decision over (prompts x models) arrays.

    Returns the chosen column per row (-1 where no model is eligible) and whether the choice
    cleared the threshold. Models with NaN cost are never eligible.
    """
    ok = ~np.isnan(cost_usd)
    if eligible is not None:
        ok &= eligible
    clearing = ok & (p_pass >= threshold)
    big = np.finfo(float).max
    # cheapest clearing model; among equal costs the more likely one
    cost_key = np.where(clearing, np.nan_to_num(cost_usd, nan=big), big)
    cheapest = _lexargmin(cost_key, -p_pass)
    likely = _lexargmin(np.where(ok, -p_pass, big), np.nan_to_num(cost_usd, nan=big))
    any_clearing = clearing.any(axis=1)
    chosen = np.where(any_clearing, cheapest, likely)
    chosen = np.where(ok.any(axis=1), chosen, -1)
    return chosen, any_clearing


def choose_by_value(
    p_pass: np.ndarray,
    cost_usd: np.ndarray,
    value_usd: float | np.ndarray,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Vectorized value rule: per row, the model with the highest expected net value
    ``value_usd * P(pass) - expected cost`` (the cheaper on a tie); -1 where none is eligible.

    ``value_usd`` is what a passing answer is worth to the caller. Unlike one threshold for every
    prompt, it weighs each prompt's gain in P(pass) against that prompt's extra cost.
    """
    ok = ~np.isnan(cost_usd)
    if eligible is not None:
        ok &= eligible
    big = np.finfo(float).max
    cost = np.nan_to_num(cost_usd, nan=big)
    net = np.where(ok, np.asarray(value_usd) * p_pass - cost, -big)
    chosen = _lexargmin(-net, cost)
    return np.where(ok.any(axis=1), chosen, -1)


def _lexargmin(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Row-wise argmin of ``primary``, ties broken by the smaller ``secondary``."""
    best = primary.min(axis=1, keepdims=True)
    tied = primary == best
    return np.where(tied, secondary, np.inf).argmin(axis=1)


def decide(
    models: Sequence[str],
    p_pass: np.ndarray,
    cost_usd: np.ndarray,
    threshold: float,
    router: str,
    allowed_models: Sequence[str] | None = None,
    max_cost_usd: float | None = None,
    answer_value_usd: float | None = None,
) -> Decision:
    """The decision for one prompt from its per-model P(pass) and expected cost: by the value
    rule when ``answer_value_usd`` is given, else by the threshold rule."""
    eligible = np.ones(len(models), dtype=bool)
    if allowed_models is not None:
        allowed = set(allowed_models)
        eligible &= np.array([m in allowed for m in models])
    if max_cost_usd is not None:
        eligible &= np.nan_to_num(cost_usd, nan=np.inf) <= max_cost_usd
    if answer_value_usd is not None:
        chosen = choose_by_value(
            p_pass[None, :], cost_usd[None, :], answer_value_usd, eligible[None, :]
        )
        rule = HIGHEST_VALUE
    else:
        chosen, cleared = choose(p_pass[None, :], cost_usd[None, :], threshold, eligible[None, :])
        rule = CLEARS_THRESHOLD if cleared[0] else MOST_LIKELY
    index = int(chosen[0])
    if index < 0:
        raise NoCandidateError(
            "no candidate model is allowed, priced and within max_cost_usd for this request"
        )
    candidates = [
        Candidate(
            model=m,
            p_pass=float(p_pass[j]),
            expected_cost_usd=None if np.isnan(cost_usd[j]) else float(cost_usd[j]),
        )
        for j, m in enumerate(models)
    ]
    candidates.sort(key=lambda c: (c.expected_cost_usd is None, c.expected_cost_usd or 0.0))
    return Decision(
        model=models[index],
        rule=rule,
        threshold=None if answer_value_usd is not None else threshold,
        p_pass=float(p_pass[index]),
        expected_cost_usd=float(cost_usd[index]),
        candidates=candidates,
        router=router,
        answer_value_usd=answer_value_usd,
    )


def route(
    router: Any,
    catalog: Catalog,
    prompt: str,
    threshold: float | None = None,
    allowed_models: Sequence[str] | None = None,
    max_cost_usd: float | None = None,
    answer_value_usd: float | None = None,
) -> Decision:
    """Score every model the router knows that the catalog prices for one prompt, and decide
    (an unpriced model has no cost to route on); with ``allowed_models``, those (any priced
    catalog model when the router can score models on their prior)."""
    models = [m for m in router.models if m in catalog and catalog.get(m).priced]
    if allowed_models is not None:
        scorable = [
            m
            for m in allowed_models
            if m in models or (router.open and m in catalog and catalog.get(m).priced)
        ]
        unknown = [m for m in allowed_models if m not in scorable]
        if unknown:
            raise NoCandidateError(f"allowed_models the router cannot score: {', '.join(unknown)}")
        models = list(dict.fromkeys(scorable))
    features = router.featurizer().transform([prompt])
    answer = router.answer_tokens(features, models)
    cost_usd = expected_costs([prompt], models, catalog, answer_tokens=answer)[0]
    near = router.nearness(features)
    p_pass = router.p_pass(
        [prompt], models, cost_usd[None, :], features=features, catalog=catalog, nearness=near
    )
    chosen_threshold = router.default_threshold if threshold is None else threshold
    name = f"{router.name}@{getattr(router, 'version', '?')}"
    decision = decide(
        models,
        p_pass[0],
        cost_usd,
        chosen_threshold,
        name,
        allowed_models,
        max_cost_usd,
        answer_value_usd,
    )
    return replace(decision, ood_score=None if near is None else float(near.score[0]))
