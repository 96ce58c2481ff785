"""The promotion gate's statistics: does the challenger keep the champion's pass rate at a lower
cost, and when it does not, was it worse or were the data too few to tell.

The gate's items are held-out prompts: the public test prompts (every model's graded answer is
known, so each router's choice has a known pass and cost) and the traffic's own test requests
(15 % of logged prompts by a hash of the prompt; never trained on). A traffic request has a
graded answer of one model only, so each router's pass and cost on it is its doubly robust term
(training/offpolicy.py's cross-fitted reward model r and the logged propensity p of the served
model a): r(x, t) + [a = t] / p * (y - r(x, a)) for the router's choice t. Where both routers
choose the same model the two terms are equal, so the request adds exactly 0 to the pass-rate
difference; only requests where they disagree carry it.

A paired bootstrap (``BOOTSTRAP`` resamples of the pooled items) gives the pass-rate difference
(challenger - champion) and the total-cost change (challenger / champion - 1) with one-sided
bounds at ``confidence``. The gate passes when the difference's lower bound is at least
``-margin`` and the cost change's upper bound is below 0.

Minimum detectable difference (MDD): ``(z(confidence) + z(POWER)) * se``, with ``se`` the
bootstrap standard error of the estimate and ``POWER`` = 0.8; at confidence 0.95 that is
2.49 standard errors (the familiar 2.8 is for a two-sided 5 % test). For the pass rate it is the
smallest margin the gate would pass, with 80 % probability, for a challenger exactly as good as
the champion on prompts like these; for the cost it is the smallest true cost gain the gate
would find with 80 % probability. So a failed quality check reads as one of:

- ``worse``: the difference's upper bound is below 0 (the pass rate is significantly lower);
- ``too few data to tell``: not significantly lower, but the MDD exceeds the margin (even an
  equally good challenger would usually fail); about ``n * (mdd / margin)^2`` items would do;
- ``probably worse``: not significantly lower, yet the data suffice (MDD <= margin): an equally
  good challenger would most likely have passed, and this one's pass rate came out lower.

and a failed cost check as ``costlier`` (the cost change's lower bound is above 0), ``not
cheaper`` (no gain at all on these items), or ``too few data to tell`` (a gain smaller than the
cost MDD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from service.routing.learned import LearnedRouter
from training.offpolicy import OffPolicy, _indices, logged_arrays, router_policy

BOOTSTRAP = 2000
POWER = 0.8
QUALITY_WORSE = "worse"
PROBABLY_WORSE = "probably worse"
TOO_FEW = "too few data to tell"
NOT_WORSE = "not worse"
CHEAPER, COSTLIER, NOT_CHEAPER = "cheaper", "costlier", "not cheaper"


@dataclass
class Gate:
    passed: bool
    prompts: int  # held-out items pooled: public test prompts and traffic test requests
    quality_diff: float  # challenger - champion pass rate
    quality_diff_low: float  # its one-sided lower confidence bound
    cost_change: float  # challenger / champion total cost - 1
    cost_change_high: float  # its one-sided upper confidence bound
    margin: float
    confidence: float
    reason: str
    public_prompts: int = 0
    traffic_test_requests: int = 0
    quality_diff_high: float = float("nan")  # one-sided upper bound
    quality_se: float = float("nan")  # bootstrap standard error
    quality_mdd: float = float("nan")  # minimum detectable difference (module docstring)
    quality_verdict: str = ""
    cost_change_low: float = float("nan")  # one-sided lower bound
    cost_se: float = float("nan")
    cost_mdd: float = float("nan")
    cost_verdict: str = ""
    power: float = POWER
    prompts_needed: int | None = None  # at this margin, for the quality MDD to reach it
    traffic_test: dict[str, Any] = field(default_factory=dict)


def detectable(se: float, confidence: float, power: float = POWER) -> float:
    """The minimum detectable difference of a one-sided test at ``confidence`` with ``power``
    for an estimate with standard error ``se``."""
    normal = NormalDist()
    return (normal.inv_cdf(confidence) + normal.inv_cdf(power)) * se


def decide(
    q_new: np.ndarray,
    q_old: np.ndarray,
    c_new: np.ndarray,
    c_old: np.ndarray,
    margin: float,
    confidence: float,
    seed: int = 0,
    public_prompts: int | None = None,
    traffic_test: dict[str, Any] | None = None,
) -> Gate:
    """The gate on per-item passes (or doubly robust terms) and costs of both routers."""
    n = len(q_new)
    if n == 0:
        raise ValueError("the gate needs at least one held-out prompt")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(BOOTSTRAP, n))
    quality = (q_new[draws] - q_old[draws]).mean(axis=1)
    cost = c_new[draws].sum(axis=1) / c_old[draws].sum(axis=1) - 1
    low, high = (float(np.quantile(quality, q)) for q in (1 - confidence, confidence))
    cost_low, cost_high = (float(np.quantile(cost, q)) for q in (1 - confidence, confidence))
    diff = float((q_new - q_old).mean())
    change = float(c_new.sum() / c_old.sum() - 1)
    se, cost_se = float(np.std(quality, ddof=1)), float(np.std(cost, ddof=1))
    mdd, cost_mdd = detectable(se, confidence), detectable(cost_se, confidence)
    needed = math.ceil(n * (mdd / margin) ** 2) if margin > 0 and mdd > margin else None
    if low >= -margin:
        verdict = NOT_WORSE
    elif high < 0:
        verdict = QUALITY_WORSE
    elif mdd > margin:
        verdict = TOO_FEW
    else:
        verdict = PROBABLY_WORSE
    if cost_high < 0:
        cost_verdict = CHEAPER
    elif cost_low > 0:
        cost_verdict = COSTLIER
    elif change >= 0:
        cost_verdict = NOT_CHEAPER
    else:
        cost_verdict = TOO_FEW
    passed = verdict == NOT_WORSE and cost_verdict == CHEAPER
    return Gate(
        passed=passed,
        prompts=n,
        quality_diff=diff,
        quality_diff_low=low,
        cost_change=change,
        cost_change_high=cost_high,
        margin=margin,
        confidence=confidence,
        reason=_reason(
            (verdict, cost_verdict),
            (diff, low, high, mdd),
            margin,
            (change, cost_high, cost_mdd),
            n,
            needed,
        ),
        public_prompts=n if public_prompts is None else public_prompts,
        traffic_test_requests=n - (n if public_prompts is None else public_prompts),
        quality_diff_high=high,
        quality_se=se,
        quality_mdd=mdd,
        quality_verdict=verdict,
        cost_change_low=cost_low,
        cost_se=cost_se,
        cost_mdd=cost_mdd,
        cost_verdict=cost_verdict,
        prompts_needed=needed,
        traffic_test=traffic_test or {},
    )


def _reason(
    verdicts: tuple[str, str],
    quality_numbers: tuple[float, float, float, float],
    margin: float,
    cost_numbers: tuple[float, float, float],
    n: int,
    needed: int | None,
) -> str:
    """The decision in words: the verdicts, the numbers, and what more data would do."""
    verdict, cost_verdict = verdicts
    diff, low, high, mdd = quality_numbers
    change, cost_high, cost_mdd = cost_numbers
    quality = (
        f"pass rate {diff:+.4f} (lower bound {low:+.4f}, upper {high:+.4f}; margin {margin}, "
        f"minimum detectable difference {mdd:.4f} on {n:,} prompts)"
    )
    cost = (
        f"cost {change:+.2%} (upper bound {cost_high:+.2%}; minimum detectable change "
        f"{cost_mdd:.2%})"
    )
    if verdict == NOT_WORSE and cost_verdict == CHEAPER:
        return f"passed: not worse and cheaper: {quality}; {cost}"
    parts = []
    if verdict == QUALITY_WORSE:
        parts.append(f"worse: the pass rate is significantly lower: {quality}")
    elif verdict == TOO_FEW:
        more = f"; about {needed:,} prompts would be needed" if needed else ""
        parts.append(
            f"too few data to tell whether the pass rate is lower by more than the margin: "
            f"{quality}{more}"
        )
    elif verdict == PROBABLY_WORSE:
        parts.append(
            "probably worse: the data would show an equally good challenger within the margin, "
            f"but this one's pass rate came out lower: {quality}"
        )
    if cost_verdict == COSTLIER:
        parts.append(f"costlier: {cost}")
    elif cost_verdict == NOT_CHEAPER:
        parts.append(f"not cheaper: {cost}")
    elif cost_verdict == TOO_FEW:
        parts.append(f"too few data to tell whether it is cheaper: {cost}")
    return "; ".join(parts)


@dataclass
class TrafficTerms:
    """Each router's doubly robust pass and cost on the traffic's test requests."""

    q_new: np.ndarray
    q_old: np.ndarray
    c_new: np.ndarray
    c_old: np.ndarray
    info: dict[str, Any]

    @classmethod
    def empty(cls, note: str) -> TrafficTerms:
        none = np.zeros(0)
        return cls(none, none, none, none, {"requests": 0, "note": note})


def traffic_terms(
    logged: pd.DataFrame, champion: LearnedRouter, challenger: LearnedRouter
) -> TrafficTerms:
    """The gate's terms for the logged auto-routed test requests ``logged`` (rated, with stored
    prompts), each router at its own default threshold among the request's priced candidates.
    Every request is weighted by its own logged propensity, so requests of several router
    versions mix soundly; where no request explored, the reward model fills in."""
    if logged.empty:
        return TrafficTerms.empty("no rated auto-routed requests in the traffic's test split")
    try:
        new = router_policy(challenger)(logged)
        old = router_policy(champion)(logged)
        arrays = logged_arrays(logged, extra_models=set(new) | set(old))
    except ValueError as error:  # a router that knows no candidate, a missing propensity
        return TrafficTerms.empty(f"not used: {error}")
    estimator = OffPolicy(arrays)
    t_new, t_old = _indices(arrays, new), _indices(arrays, old)
    quality = np.clip(arrays.quality, 0.0, 1.0)
    served_quality = estimator.predicted_quality(arrays.served)
    served_cost = estimator.predicted_cost(arrays.served)
    cost_residual = np.nan_to_num(arrays.cost - served_cost)  # unknown cost: the prediction

    def terms(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight = (arrays.served == target) / arrays.propensity
        q = estimator.predicted_quality(target) + weight * (quality - served_quality)
        c = estimator.predicted_cost(target) + weight * cost_residual
        return q, c

    (q_new, c_new), (q_old, c_old) = terms(t_new), terms(t_old)
    disagree = t_new != t_old
    supporting = disagree & ((arrays.served == t_new) | (arrays.served == t_old))
    info = {
        "requests": len(logged),
        "disagreeing": int(disagree.sum()),  # where the difference is not 0
        "supporting": int(supporting.sum()),  # of those, served one router's choice
        "quality_diff": float((q_new - q_old).mean()),
        "cost_new_usd": float(c_new.mean()),
        "cost_old_usd": float(c_old.mean()),
        "note": "doubly robust terms from the logged propensities (training/gate.py)",
    }
    return TrafficTerms(q_new, q_old, c_new, c_old, info)
