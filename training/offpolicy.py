"""Off-policy evaluation: what a router that did not serve the logged traffic would have cost and
how good its answers would have been, from the logged requests and their propensities.

The logging policy: the router decides (the cheapest candidate whose P(pass) clears the
threshold, or the value rule), and with the exploration rate e the gateway instead serves a
model drawn uniformly from the K models it considered (service/routing/exploration.py). The
ledger keeps the served model a_i, its propensity p_i = (1 - e) * [a_i is the decision] + e / K,
the candidates with the router's P(pass) and expected cost, and whether the request explored. A
target policy picks t_i for request i; only requests it agrees with (a_i = t_i) tell anything
about it, each with the weight w_i = 1 / p_i.

Requests fall into two strata by a function of the request alone: those where the target agrees
with the logged router's own decision (replayed from the candidates), where most requests
agree, and those where it departs from it, which only explored requests can support. Within a
stratum:

- ``ips``: the self-normalized inverse-propensity mean, sum w_i y_i / sum w_i over the agreeing
  requests;
- ``dr`` (doubly robust): the mean of a reward model's prediction for the target's choice over
  the stratum plus the self-normalized mean of the agreeing requests' residuals. The reward model
  is fitted on the other half of the logged traffic (two-fold cross-fitting): for quality a
  logistic regression on the logged router's P(pass) (its logit) and the model, a recalibration
  of P(pass) learned from the feedback rather than P(pass) itself; for cost each model's ratio of
  actual to expected cost.

The strata combine by their shares of the requests. A stratum's share is known exactly, so a
policy that agrees with the logged router on most requests is not made noisy by the few heavy
weights of the rest. Intervals are at 95 %: normal, from each stratum's variance and the variance
of the shares, clipped to the metric's range ([0, 1] for quality, >= 0 for cost). For quality
each stratum counts z^2 / 2 pseudo-requests at each end of the range beside its supporting
requests (Agresti-Coull, in units of the stratum's effective sample size; for DR, the residuals
those ends would have): a stratum that few requests support gets a wide interval, not the
confident one a handful of passing answers would give, and the estimate is the interval's
center (with many requests, the plain self-normalized or doubly robust mean). The doubly robust
variance is also at least the spread of its predictions plus that, or its influence terms'
where larger. Cost has no upper end: its variance is at least what the supporting requests'
outcomes vary by among all requests their model served.

Effective sample size: (sum v)^2 / sum v^2 of the weights v the estimate gives the requests (a
request's stratum share times its normalized weight there), that is 1 / sum over strata of
share^2 / (sum w)^2 / sum w^2; with one stratum it is Kish's (sum w)^2 / sum w^2, and it is 0
when a stratum has no supporting request. Below ``MIN_EFFECTIVE_SAMPLE_SIZE`` the estimate is
withheld (``value`` null, ``reason`` "not enough overlap"): the data say too little about that
policy. ``training/offpolicy_check.py`` measures the intervals' coverage on simulated logs with
a known truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from service.pacing import chosen_cost
from service.routing.decision import choose_by_value
from service.routing.exploration import stable_unit
from service.routing.heuristic import HeuristicRouter
from service.routing.learned import LearnedRouter

Policy = Callable[[pd.DataFrame], list[str]]  # logged requests -> the model it would choose

Z = 1.959964  # two-sided 95 %
MIN_EFFECTIVE_SAMPLE_SIZE = 30.0
NOT_ENOUGH_OVERLAP = "not enough overlap"
QUALITY_RANGE = (0.0, 1.0)
COST_PRIOR_REQUESTS = 10.0  # pseudo-requests shrinking a model's cost ratio toward the pooled one
RIDGE = 1.0  # L2 penalty of the reward model's per-model offsets


@dataclass(frozen=True)
class Estimate:
    """One estimate of a policy's mean quality or cost per request; ``value`` and the interval
    are None when withheld, with the ``reason``."""

    value: float | None
    se: float | None  # standard error
    ci_low: float | None  # 95 %
    ci_high: float | None
    n: int  # requests with the metric (rated ones for quality)
    effective_sample_size: float
    explored_agreeing: int  # explored requests that served what the policy would have
    reason: str | None = None

    def covers(self, value: float) -> bool:
        return (
            self.ci_low is not None and self.ci_high is not None
            and self.ci_low <= value <= self.ci_high
        )  # fmt: skip


@dataclass
class LoggedArrays:
    """Logged requests as arrays over one list of models (columns of the matrices)."""

    models: list[str]
    served: np.ndarray  # model index served
    propensity: np.ndarray  # of the served model under the logging policy
    decision: np.ndarray  # model index the logged router decided, without exploration
    explored: np.ndarray  # bool: exploration served another model than the decision
    p_pass: np.ndarray  # requests x models: the logged router's P(pass), NaN: not a candidate
    expected_cost: np.ndarray  # requests x models, NaN: not a candidate or unpriced
    quality: np.ndarray  # NaN: not rated
    cost: np.ndarray  # NaN: not known
    fold: np.ndarray  # 0 or 1, for cross-fitting the reward models

    def __post_init__(self) -> None:
        n = len(self.served)
        if not (self.propensity > 0).all() or (self.propensity > 1 + 1e-9).any():
            raise ValueError("logged propensities must be in (0, 1]")
        for name in ("propensity", "decision", "explored", "quality", "cost", "fold"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, not {n}")


def _lookup(candidates: list[dict[str, Any]], model: str, field_name: str) -> float:
    for candidate in candidates:
        if candidate["model"] == model:
            value = candidate.get(field_name)
            return float(value) if value is not None else float("nan")
    return float("nan")


def _fold(request_id: Any, position: int) -> int:
    if request_id is None or (isinstance(request_id, float) and math.isnan(request_id)):
        return position % 2
    return int(stable_unit(str(request_id), "cross-fit") < 0.5)


def logged_arrays(logged: pd.DataFrame, extra_models: set[str] | None = None) -> LoggedArrays:
    """The arrays of ``logged`` (rows as ``training.traffic.logged_requests`` returns them), the
    logged router's decisions replayed from each request's candidates and rule."""
    missing = {"candidates", "served_model", "propensity"} - set(logged.columns)
    if missing:
        raise ValueError(f"logged requests lack the columns {sorted(missing)}")
    if logged["propensity"].isna().any():
        raise ValueError("every logged request needs its propensity (auto-routed requests only)")
    decided = logged_policy()(logged)
    candidates = logged["candidates"].tolist()
    served_models = logged["served_model"].astype(str).tolist()
    names = {c["model"] for row in candidates for c in row} | set(served_models) | set(decided)
    names |= extra_models or set()
    models = sorted(names)
    index = {m: j for j, m in enumerate(models)}
    n = len(logged)
    p_pass = np.full((n, len(models)), np.nan)
    expected = np.full((n, len(models)), np.nan)
    for i, row in enumerate(candidates):
        for c in row:
            j = index[c["model"]]
            p_pass[i, j] = float(c["p_pass"]) if c.get("p_pass") is not None else np.nan
            cost = c.get("expected_cost_usd")
            expected[i, j] = float(cost) if cost is not None else np.nan
    served = np.array([index[m] for m in served_models], dtype=int)
    decision = np.array([index[m] for m in decided], dtype=int)
    explored = served != decision
    if "explored" in logged.columns:  # the ledger's own record, where it has one
        recorded = logged["explored"]
        explored = np.where(recorded.notna(), recorded.fillna(False).astype(bool), explored)
    ids = logged["id"].tolist() if "id" in logged.columns else [None] * n
    quality = pd.to_numeric(logged.get("quality", pd.Series([np.nan] * n)), errors="coerce")
    cost = pd.to_numeric(logged.get("cost_usd", pd.Series([np.nan] * n)), errors="coerce")
    return LoggedArrays(
        models=models,
        served=served,
        propensity=logged["propensity"].astype(float).to_numpy(),
        decision=decision,
        explored=np.asarray(explored, dtype=bool),
        p_pass=p_pass,
        expected_cost=expected,
        quality=quality.astype(float).to_numpy(),
        cost=cost.astype(float).to_numpy(),
        fold=np.array([_fold(r, i) for i, r in enumerate(ids)], dtype=int),
    )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.nan_to_num(p, nan=0.5), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _design(p: np.ndarray, action: np.ndarray, n_models: int) -> np.ndarray:
    x = np.zeros((len(action), 2 + n_models))
    x[:, 0] = 1.0
    x[:, 1] = _logit(p)
    x[np.arange(len(action)), 2 + action] = 1.0
    return x


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge logistic regression by Newton's method; ``y`` in [0, 1] (graded, not only 0/1)."""
    penalty = np.full(x.shape[1], RIDGE)
    penalty[:2] = 1e-3  # intercept and slope: barely penalized
    beta = np.zeros(x.shape[1])
    for _ in range(50):
        mu = 1 / (1 + np.exp(-(x @ beta)))
        gradient = x.T @ (mu - y) + penalty * beta
        hessian = (x * (mu * (1 - mu))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


@dataclass
class _CostModel:
    ratio: np.ndarray  # per model: actual / expected cost
    mean: np.ndarray  # per model: mean actual cost (for candidates without an expected cost)


def _fit_cost(arrays: LoggedArrays, rows: np.ndarray) -> _CostModel:
    m = len(arrays.models)
    actual = arrays.cost[rows]
    expected = arrays.expected_cost[rows, arrays.served[rows]]
    usable = ~np.isnan(actual) & ~np.isnan(expected)
    pooled_mean = float(np.nanmean(actual)) if (~np.isnan(actual)).any() else 0.0
    total_expected = expected[usable].sum()
    pooled = actual[usable].sum() / total_expected if total_expected > 0 else 1.0
    ratio, mean = np.full(m, pooled), np.full(m, pooled_mean)
    served = arrays.served[rows]
    for j in range(m):
        mine = usable & (served == j)
        typical = expected[mine].mean() if mine.any() else 0.0
        denominator = expected[mine].sum() + COST_PRIOR_REQUESTS * typical
        if denominator > 0:
            ratio[j] = (actual[mine].sum() + COST_PRIOR_REQUESTS * typical * pooled) / denominator
        known = (served == j) & ~np.isnan(actual)
        if known.any():
            mean[j] = (actual[known].sum() + COST_PRIOR_REQUESTS * pooled_mean) / (
                known.sum() + COST_PRIOR_REQUESTS
            )
    return _CostModel(ratio, mean)


@dataclass
class OffPolicy:
    """Estimates of target policies on one set of logged requests (reward models fitted once)."""

    arrays: LoggedArrays
    min_effective_sample_size: float = MIN_EFFECTIVE_SAMPLE_SIZE
    _quality_models: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _cost_models: dict[int, _CostModel] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.min_effective_sample_size >= 1:
            raise ValueError("the minimum effective sample size must be at least 1")
        a, m = self.arrays, len(self.arrays.models)
        rated = ~np.isnan(a.quality)
        for f in (0, 1):
            train = rated & (a.fold != f)
            if train.sum() >= 2:
                x = _design(a.p_pass[train, a.served[train]], a.served[train], m)
                y = np.clip(a.quality[train], *QUALITY_RANGE)
                self._quality_models[f] = _fit_logistic(x, y)
            self._cost_models[f] = _fit_cost(a, np.flatnonzero(a.fold != f))

    def predicted_quality(self, action: np.ndarray) -> np.ndarray:
        """The cross-fitted reward model's quality for each request's ``action``."""
        a, out = self.arrays, np.full(len(action), np.nan)
        rows = np.arange(len(action))
        fallback = float(np.nanmean(a.quality)) if (~np.isnan(a.quality)).any() else 0.5
        for f in (0, 1):
            mine = a.fold == f
            beta = self._quality_models.get(f)
            if beta is None:
                out[mine] = fallback
                continue
            x = _design(a.p_pass[rows[mine], action[mine]], action[mine], len(a.models))
            out[mine] = 1 / (1 + np.exp(-(x @ beta)))
        return out

    def predicted_cost(self, action: np.ndarray) -> np.ndarray:
        a, out = self.arrays, np.full(len(action), np.nan)
        rows = np.arange(len(action))
        for f in (0, 1):
            mine = a.fold == f
            model = self._cost_models[f]
            expected = a.expected_cost[rows[mine], action[mine]]
            out[mine] = np.where(
                np.isnan(expected), model.mean[action[mine]], expected * model.ratio[action[mine]]
            )
        return out

    def evaluate(self, target: np.ndarray) -> dict[str, Any]:
        """Both metrics' IPS and DR estimates for the per-request model indices ``target``."""
        a = self.arrays
        target = np.asarray(target, dtype=int)
        if len(target) != len(a.served):
            raise ValueError(f"{len(target)} choices for {len(a.served)} logged requests")
        match = a.served == target
        weight = match / a.propensity
        agrees = target == a.decision  # the stratum: a function of the request, not its outcome
        rated, costed = ~np.isnan(a.quality), ~np.isnan(a.cost)
        result: dict[str, Any] = {
            "requests": len(target),
            "agreement": float(match.mean()) if len(match) else float("nan"),
            "agrees_with_logged_decision": float(agrees.mean()) if len(agrees) else float("nan"),
            "explored": int(a.explored.sum()),
            "explored_agreeing": int((a.explored & match).sum()),
            "observed": {  # what the logged traffic itself got, exploration included
                "quality": float(a.quality[rated].mean()) if rated.any() else float("nan"),
                "cost_usd": float(a.cost[costed].mean()) if costed.any() else float("nan"),
            },
        }
        predictions = {
            "quality": (self.predicted_quality(target), self.predicted_quality(a.served)),
            "cost_usd": (self.predicted_cost(target), self.predicted_cost(a.served)),
        }
        supporting = a.explored & match
        for metric, keep, bounds in (
            ("quality", rated, QUALITY_RANGE),
            ("cost_usd", costed, (0.0, None)),
        ):
            y = (np.clip(a.quality, *QUALITY_RANGE) if metric == "quality" else a.cost)[keep]
            q_target, q_served = (q[keep] for q in predictions[metric])
            data = _Data(
                y, weight[keep], q_target, y - q_served, _spread(y - q_served, a.served[keep])
            )
            strata = [s for s in (agrees[keep], ~agrees[keep]) if s.any()]
            supported = int(supporting[keep].sum())
            result[metric] = {
                method: asdict(self._estimate(data, strata, supported, bounds, method == "dr"))
                for method in ("ips", "dr")
            }
        return result

    def _estimate(
        self,
        data: _Data,
        strata: list[np.ndarray],
        explored_agreeing: int,
        bounds: tuple[float, float | None],
        doubly_robust: bool,
    ) -> Estimate:
        n = len(data.y)
        ess = _stratified_kish(data.w, strata)
        withheld = Estimate(None, None, None, None, n, ess, explored_agreeing, NOT_ENOUGH_OVERLAP)
        if n == 0:
            return replace(withheld, reason="no requests with this metric")
        if ess < self.min_effective_sample_size:
            return withheld
        parts = []
        for stratum in strata:
            part = _stratum(data.subset(stratum), bounds, doubly_robust)
            if part is None:
                return withheld
            parts.append((stratum.mean(), *part))
        share, center, variance = (np.array(column) for column in zip(*parts, strict=True))
        value = float((share * center).sum())
        # each stratum's variance, and that of the strata's shares (the requests are a sample)
        total = float((share**2 * variance).sum() + (share * (center - value) ** 2).sum() / n)
        se = math.sqrt(max(total, 0.0))
        low, high = bounds
        ci_high = value + Z * se if high is None else min(high, value + Z * se)
        return Estimate(value, se, max(low, value - Z * se), ci_high, n, ess, explored_agreeing)


@dataclass(frozen=True)
class _Data:
    """One metric's observed requests: outcome, weight (0 unless the served model is the
    target's choice), the reward model's prediction for the target's choice, the residual of
    the served model's outcome and how much residuals of that model vary."""

    y: np.ndarray
    w: np.ndarray
    predicted: np.ndarray
    residual: np.ndarray
    spread: np.ndarray

    def subset(self, rows: np.ndarray) -> _Data:
        return _Data(
            *(getattr(self, f)[rows] for f in ("y", "w", "predicted", "residual", "spread"))
        )


def _kish(w: np.ndarray) -> float:
    total = float(w.sum())
    return total * total / float((w * w).sum()) if total > 0 else 0.0


def _stratified_kish(w: np.ndarray, strata: Sequence[np.ndarray]) -> float:
    """(sum v)^2 / sum v^2 of the weights v the stratified estimate gives the requests (a
    request's share of its stratum times its normalized weight there): 1 / sum over strata of
    share^2 / the stratum's own effective sample size; 0 when a stratum has no support."""
    n = sum(int(s.sum()) for s in strata)
    total = 0.0
    for stratum in strata:
        ess = _kish(w[stratum])
        if ess <= 0:
            return 0.0
        total += (stratum.sum() / n) ** 2 / ess
    return 1.0 / total if total > 0 else 0.0


def _spread(values: np.ndarray, served: np.ndarray) -> np.ndarray:
    """Per request, the variance of ``values`` over every request served by the same model (the
    pooled variance where a model served fewer than two): what one supporting request's outcome
    may vary by, known from far more requests than a small stratum has."""
    pooled = float(values.var()) if len(values) > 1 else 0.0
    out = np.full(len(values), pooled)
    for j in np.unique(served):
        mine = served == j
        if mine.sum() > 1:
            out[mine] = float(values[mine].var())
    return out


def _stratum(
    data: _Data, bounds: tuple[float, float | None], doubly_robust: bool
) -> tuple[float, float] | None:
    """One stratum's estimate and its variance (None: no supporting request, the stratum
    cannot be estimated).

    IPS: the self-normalized mean of the supporting requests' outcomes. DR: the mean prediction
    for the target's choice over the stratum plus the self-normalized mean of the supporting
    requests' residuals."""
    low, high = bounds
    w, count, total = data.w, len(data.y), float(data.w.sum())
    if total <= 0:
        return None
    ess = _kish(w)
    u = w / total * ess  # weights in effective requests: sum u = sum u^2 = ess
    outcome = data.residual if doubly_robust else data.y
    base = float(data.predicted.mean()) if doubly_robust else 0.0
    base_var = float(data.predicted.var()) / count
    mean = float((w * outcome).sum()) / total
    if high is not None:
        # z^2 / 2 pseudo-requests at each end of the range beside the supporting ones
        # (Agresti-Coull), in the outcome's terms (for DR: the residual an end would have)
        ends = np.array([low, high]) - (min(max(base, low), high) if doubly_robust else 0.0)
        center = (ess * mean + Z * Z / 2 * ends.sum()) / (ess + Z * Z)
        squares = float((u * u * (outcome - center) ** 2).sum())
        squares += Z * Z / 2 * float(((ends - center) ** 2).sum())
        variance = squares / (ess + Z * Z) ** 2
    else:
        # no upper end: at least the variance a supporting request's outcome has among all the
        # requests its model served (and, for IPS, the spread of predictions over the stratum)
        center = mean
        observed = float((u * u * (outcome - center) ** 2).sum()) / (ess * ess)
        spread = data.spread if doubly_robust else data.spread + data.predicted.var()
        variance = max(observed, float((w * w * spread).sum()) / (total * total))
    if doubly_robust:  # the predictions' own spread, or the influence terms' where larger
        influence = (data.predicted - base) + count * w / total * (outcome - mean)
        variance = max(base_var + variance, float((influence**2).sum()) / count**2)
    return base + center, variance


def evaluate_policy(
    logged: pd.DataFrame,
    choices: list[str],
    min_effective_sample_size: float = MIN_EFFECTIVE_SAMPLE_SIZE,
) -> dict[str, Any]:
    """IPS and DR estimates of quality and cost for the given per-request choices."""
    arrays = logged_arrays(logged, set(choices))
    return OffPolicy(arrays, min_effective_sample_size).evaluate(_indices(arrays, choices))


def _indices(arrays: LoggedArrays, choices: Sequence[str]) -> np.ndarray:
    index = {m: j for j, m in enumerate(arrays.models)}
    unknown = sorted({c for c in choices if c not in index})
    if unknown:
        raise ValueError(f"the policy chose models no logged request had: {unknown[:5]}")
    return np.array([index[c] for c in choices], dtype=int)


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


def _rules(logged: pd.DataFrame) -> list[tuple[Any, Any]]:
    values = logged.get("answer_value_usd", pd.Series([None] * len(logged)))
    return list(zip(logged["threshold"], values, strict=True))


def logged_policy() -> Policy:
    """The logging router's decisions without exploration (each request by its own rule: at
    its threshold, or at its answer value)."""

    def decisions(logged: pd.DataFrame) -> list[str]:
        return [
            _logged_choice(c, t, v)
            for c, (t, v) in zip(logged["candidates"], _rules(logged), strict=True)
        ]

    return decisions


def threshold_policy(threshold: float) -> Policy:
    """The logging router's own P(pass) at another threshold (needs no prompts)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"a threshold must be in [0, 1], not {threshold}")
    return lambda logged: [_threshold_choice(c, threshold) for c in logged["candidates"]]


def _prompts(logged: pd.DataFrame) -> list[str]:
    if "prompt" not in logged.columns or logged["prompt"].isna().any():
        raise ValueError(
            "evaluating another router needs the logged prompts: run the service with "
            "SWITCHBOARD_STORE_CONTENT=true (threshold variants of the logged router need none)"
        )
    return logged["prompt"].tolist()


def _priced(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates exploration could have served (the gateway explores priced ones)."""
    return [c for c in candidates if c.get("expected_cost_usd") is not None]


def _decide(p: np.ndarray, cost: np.ndarray, models: list[str], threshold: float) -> str:
    clearing = [j for j in range(len(models)) if p[j] >= threshold and not math.isnan(cost[j])]
    if clearing:
        return models[min(clearing, key=lambda j: cost[j])]
    return models[int(np.argmax(p))]


def router_policy(router: LearnedRouter, threshold: float | None = None) -> Policy:
    """A learned router scoring the logged prompts among each request's priced candidates."""

    def choose(logged: pd.DataFrame) -> list[str]:
        prompts, out = _prompts(logged), []
        t = router.default_threshold if threshold is None else threshold
        for prompt, candidates in zip(prompts, logged["candidates"], strict=True):
            models = [c["model"] for c in _priced(candidates) if c["model"] in router.models]
            if not models:
                raise ValueError(f"router {router.version} knows none of a request's candidates")
            cost = np.array([_lookup(candidates, m, "expected_cost_usd") for m in models])
            p = router.p_pass([prompt], models)[0]
            out.append(_decide(p, cost, models, t))
        return out

    return choose


def heuristic_policy(threshold: float | None = None) -> Policy:
    """The heuristic router among each request's priced candidates: at ``threshold``, or (None)
    by each request's own logged rule (its threshold, or its answer value), as the gateway
    would have run it in the logged router's place."""
    heuristic = HeuristicRouter()

    def choose(logged: pd.DataFrame) -> list[str]:
        prompts, out = _prompts(logged), []
        for prompt, candidates, (t, v) in zip(
            prompts, logged["candidates"], _rules(logged), strict=True
        ):
            priced = _priced(candidates)
            models = [c["model"] for c in priced]
            cost = np.array([float(c["expected_cost_usd"]) for c in priced])
            p = heuristic.p_pass([prompt], models, cost[None, :])[0]
            scored = [
                {"model": m, "p_pass": float(p[j]), "expected_cost_usd": float(cost[j])}
                for j, m in enumerate(models)
            ]
            if threshold is not None:
                out.append(_threshold_choice(scored, threshold))
            else:
                out.append(_logged_choice(scored, t, v))
        return out

    return choose


def one_router_version(
    logged: pd.DataFrame, version: str | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The logged requests one router version decided (``version``, or the newest request's),
    and what was left out: traffic mixes experiment arms and earlier champions, and a threshold
    variant or a replay means something only for one router's P(pass)."""
    if logged.empty:
        raise ValueError("no logged auto-routed requests to evaluate on")
    names = logged["router"].fillna("?").astype(str)
    versions = logged["router_version"].fillna("?").astype(str)
    labels = names + "@" + versions
    if version is None:
        newest = int(np.argmax(pd.to_datetime(logged["created_at"], utc=True).to_numpy()))
        label = labels.iloc[newest]
    else:
        matching = logged.loc[versions == version]
        if matching.empty:
            known = ", ".join(sorted(set(versions))[:10])
            raise ValueError(f"no logged requests of router version {version!r} (logged: {known})")
        newest = int(np.argmax(pd.to_datetime(matching["created_at"], utc=True).to_numpy()))
        label = labels.loc[matching.index[newest]]
    chosen = labels == label
    router, _, router_version = label.partition("@")
    left_out = labels[~chosen].value_counts()
    return logged[chosen].reset_index(drop=True), {
        "router": router,
        "router_version": router_version,
        "requests": int(chosen.sum()),
        "left_out": {str(k): int(v) for k, v in left_out.items()},
    }


def evaluate_logged(
    logged: pd.DataFrame,
    policies: dict[str, Policy],
    min_effective_sample_size: float = MIN_EFFECTIVE_SAMPLE_SIZE,
) -> dict[str, Any]:
    """Every policy's estimates on the same logged requests."""
    choices = {name: policy(logged) for name, policy in policies.items()}
    arrays = logged_arrays(logged, extra_models={m for c in choices.values() for m in c})
    estimator = OffPolicy(arrays, min_effective_sample_size)
    return {name: estimator.evaluate(_indices(arrays, c)) for name, c in choices.items()}
