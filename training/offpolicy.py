"""Off-policy evaluation: what a router that did not serve the logged traffic would have cost and
how good its answers would have been, from the logged requests and their propensities.

For each logged request i the logging policy served model a_i with propensity p_i (the
exploring gateway records it) and observed a cost c_i and, where rated, a quality r_i. A target
router picks pi(x_i). The inverse-propensity estimate of its mean reward is the mean of
1[a_i = pi(x_i)] / p_i * r_i; the doubly robust one adds a reward model q(x, a) (the logged
router's calibrated P(pass) for quality, the expected cost for cost): the mean of
q(x_i, pi(x_i)) + 1[a_i = pi(x_i)] / p_i * (r_i - q(x_i, a_i)). Intervals are mean +- 1.96
standard errors of the per-request terms. Only requests that explored (some p_i < 1) let a
router that disagrees with the logged decisions be estimated at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from service.pacing import chosen_cost
from service.routing.decision import choose_by_value
from service.routing.heuristic import HeuristicRouter
from service.routing.learned import LearnedRouter

Policy = Callable[[pd.DataFrame], list[str]]  # logged requests -> the model it would choose


@dataclass(frozen=True)
class Estimate:
    value: float
    se: float  # standard error
    ci_low: float  # 95 %
    ci_high: float
    n: int

    @classmethod
    def of(cls, terms: np.ndarray) -> Estimate:
        if len(terms) == 0:
            return cls(float("nan"), float("nan"), float("nan"), float("nan"), 0)
        mean = float(np.mean(terms))
        se = float(np.std(terms, ddof=1)) / math.sqrt(len(terms)) if len(terms) > 1 else 0.0
        return cls(mean, se, mean - 1.96 * se, mean + 1.96 * se, len(terms))

    def covers(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high


def _lookup(candidates: list[dict[str, Any]], model: str, field: str) -> float:
    for candidate in candidates:
        if candidate["model"] == model:
            value = candidate.get(field)
            return float(value) if value is not None else 0.0
    return 0.0


def evaluate_policy(logged: pd.DataFrame, choices: list[str]) -> dict[str, Any]:
    """IPS and DR estimates of quality and cost for the given per-request choices."""
    served = logged["served_model"].to_numpy()
    propensity = logged["propensity"].astype(float).to_numpy()
    match = (served == np.asarray(choices)).astype(float)
    weight = match / propensity
    candidates = logged["candidates"].tolist()
    q_target = np.array([_lookup(c, a, "p_pass") for c, a in zip(candidates, choices, strict=True)])
    q_logged = np.array([_lookup(c, a, "p_pass") for c, a in zip(candidates, served, strict=True)])
    c_target = np.array(
        [_lookup(c, a, "expected_cost_usd") for c, a in zip(candidates, choices, strict=True)]
    )
    c_logged = np.array(
        [_lookup(c, a, "expected_cost_usd") for c, a in zip(candidates, served, strict=True)]
    )
    rated = logged["quality"].notna().to_numpy()
    reward = logged["quality"].fillna(0).astype(float).to_numpy()
    costed = logged["cost_usd"].notna().to_numpy()
    cost = logged["cost_usd"].fillna(0).astype(float).to_numpy()
    return {
        "requests": len(logged),
        "agreement": float(match.mean()) if len(match) else float("nan"),
        "observed": {  # what the logged traffic itself got, exploration included
            "quality": float(reward[rated].mean()) if rated.any() else float("nan"),
            "cost_usd": float(cost[costed].mean()) if costed.any() else float("nan"),
        },
        "quality": {
            "ips": Estimate.of((weight * reward)[rated]).__dict__,
            "dr": Estimate.of((q_target + weight * (reward - q_logged))[rated]).__dict__,
        },
        "cost_usd": {
            "ips": Estimate.of((weight * cost)[costed]).__dict__,
            "dr": Estimate.of((c_target + weight * (cost - c_logged))[costed]).__dict__,
        },
    }


def _threshold_choice(candidates: list[dict[str, Any]], threshold: float) -> str:
    cost = chosen_cost(candidates, threshold)
    return next(c["model"] for c in candidates if c.get("expected_cost_usd") == cost)


def _value_choice(candidates: list[dict[str, Any]], value: float) -> str:
    """The value rule (service/routing/decision.py) over one request's logged candidates."""
    p = np.array([[c["p_pass"] for c in candidates]], dtype=float)
    cost = np.array([[c.get("expected_cost_usd") for c in candidates]], dtype=float)
    return str(candidates[int(choose_by_value(p, cost, value)[0])]["model"])


def _logged_choice(candidates: list[dict[str, Any]], threshold: Any, value: Any) -> str:
    if value is not None and not pd.isna(value):
        return _value_choice(candidates, float(value))
    return _threshold_choice(candidates, float(threshold))


def logged_policy() -> Policy:
    """The logging router's decisions without exploration (each request by its own rule: at
    its threshold, or at its answer value)."""

    def decisions(logged: pd.DataFrame) -> list[str]:
        values = logged.get("answer_value_usd", pd.Series([None] * len(logged)))
        return [
            _logged_choice(c, t, v)
            for c, t, v in zip(logged["candidates"], logged["threshold"], values, strict=True)
        ]

    return decisions


def threshold_policy(threshold: float) -> Policy:
    """The logging router's own P(pass) at another threshold (needs no prompts)."""
    return lambda logged: [_threshold_choice(c, threshold) for c in logged["candidates"]]


def _prompts(logged: pd.DataFrame) -> list[str]:
    if logged["prompt"].isna().any():
        raise ValueError(
            "evaluating another router needs the logged prompts: run the service with "
            "SWITCHBOARD_STORE_CONTENT=true (threshold variants of the logged router need none)"
        )
    return logged["prompt"].tolist()


def _decide(p: np.ndarray, cost: np.ndarray, models: list[str], threshold: float) -> str:
    clearing = [j for j in range(len(models)) if p[j] >= threshold and not math.isnan(cost[j])]
    if clearing:
        return models[min(clearing, key=lambda j: cost[j])]
    return models[int(np.argmax(p))]


def router_policy(router: LearnedRouter, threshold: float | None = None) -> Policy:
    """A learned router scoring the logged prompts among each request's candidates."""

    def choose(logged: pd.DataFrame) -> list[str]:
        prompts, out = _prompts(logged), []
        t = router.default_threshold if threshold is None else threshold
        for prompt, candidates in zip(prompts, logged["candidates"], strict=True):
            models = [c["model"] for c in candidates if c["model"] in router.models]
            cost = np.array([_lookup(candidates, m, "expected_cost_usd") for m in models])
            p = router.p_pass([prompt], models)[0]
            out.append(_decide(p, cost, models, t))
        return out

    return choose


def heuristic_policy(threshold: float) -> Policy:
    heuristic = HeuristicRouter()

    def choose(logged: pd.DataFrame) -> list[str]:
        prompts, out = _prompts(logged), []
        for prompt, candidates in zip(prompts, logged["candidates"], strict=True):
            models = [c["model"] for c in candidates]
            cost = np.array([_lookup(candidates, m, "expected_cost_usd") for m in models])
            p = heuristic.p_pass([prompt], models, cost[None, :])[0]
            out.append(_decide(p, cost, models, threshold))
        return out

    return choose


def evaluate_logged(logged: pd.DataFrame, policies: dict[str, Policy]) -> dict[str, Any]:
    """Every policy's estimates on the same logged requests."""
    return {name: evaluate_policy(logged, policy(logged)) for name, policy in policies.items()}
