"""Offline evaluation of routers on an outcomes table (shared/docs/metrics.md, implemented in
training/metrics.py).

Every router is swept over its knobs and becomes a cost-quality curve: the learned and heuristic
routers over the decision threshold and over the value of a passing answer (the two rules of
service/routing/decision.py), the random router over the same settings with uniform random
scores (10 seeds averaged), the oracle over a price-of-quality trade-off on the true
outcomes, the Zero router as the hull of the single models. From each curve's non-decreasing
convex hull come AIQ (over the common cost range of all routers) and the savings at parity
(cost at 95 % and 100 % of the reference model's quality, over the reference's cost). With
exactly two models, RouteLLM's APGR and CPT are filled as well.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.routing.decision import choose, choose_by_value, expected_costs
from service.routing.heuristic import HeuristicRouter
from service.routing.learned import AnswerLengths, LearnedRouter
from service.tokens import estimate_tokens
from training import metrics

log = logging.getLogger(__name__)

THRESHOLDS = [round(t, 2) for t in np.linspace(0.0, 1.0, 101)] + [1.01]
# the value rule's knob, as multiples of the table's mean expected cost per (prompt, model)
VALUE_MULTIPLES = np.geomspace(1e-2, 1e5, 71)
RANDOM_SEEDS = range(10)
PARITY = ("0.95", "1.0")


class EvaluationError(ValueError):
    """The outcomes and the router share too little to evaluate (no models, no prompts)."""


@dataclass
class RoutingTable:
    """One evaluation set: prompts x models with quality, cost, and the decision-time cost."""

    prompt_ids: list[str]
    prompts: list[str]
    models: list[str]
    quality: np.ndarray
    cost_usd: np.ndarray
    expected_cost_usd: np.ndarray
    notes: list[str] = field(default_factory=list)

    def score(self, bar: float, metric: str) -> np.ndarray:
        return (self.quality >= bar).astype(float) if metric == "passed" else self.quality

    def restricted(self, models: Sequence[str]) -> RoutingTable:
        """The same prompts, routed among ``models`` only."""
        columns = [self.models.index(m) for m in models]
        return replace(
            self,
            models=list(models),
            quality=self.quality[:, columns],
            cost_usd=self.cost_usd[:, columns],
            expected_cost_usd=self.expected_cost_usd[:, columns],
        )


def routing_table(outcomes: pd.DataFrame, models: Sequence[str], catalog: Catalog) -> RoutingTable:
    """Pivot outcomes to prompts x ``models``; keep prompts that have an outcome for every model.

    Rows without a cost are priced from the catalog: input tokens from the row or estimated from
    the prompt, output tokens from the row or the model's typical answer length.
    """
    notes: list[str] = []
    rows = outcomes[outcomes["model"].isin(models)]
    if rows.duplicated(["prompt_id", "model"]).any():
        repeats = int(rows.duplicated(["prompt_id", "model"]).sum())
        notes.append(f"{repeats} repeated (prompt, model) rows averaged")
    complete = rows.groupby("prompt_id")["model"].nunique() == len(models)
    dropped = int((~complete).sum())
    if dropped:
        notes.append(f"{dropped} prompts left out: they lack an outcome for some routed model")
    rows = rows[rows["prompt_id"].isin(complete.index[complete])]
    if rows.empty:
        raise EvaluationError("no prompt has an outcome for every routed model")
    rows = rows.assign(cost_usd=_priced(rows, catalog, notes))
    grouped = rows.groupby(["prompt_id", "model"])[["quality", "cost_usd"]].mean()
    quality = grouped["quality"].unstack()[list(models)]
    cost = grouped["cost_usd"].unstack()[list(models)]
    prompts = rows.drop_duplicates("prompt_id").set_index("prompt_id").loc[quality.index, "prompt"]
    return RoutingTable(
        prompt_ids=list(quality.index),
        prompts=list(prompts),
        models=list(models),
        quality=quality.to_numpy(float),
        cost_usd=cost.to_numpy(float),
        expected_cost_usd=expected_costs(list(prompts), models, catalog),
        notes=notes,
    )


def with_answer_lengths(
    table: RoutingTable, features: np.ndarray, lengths: AnswerLengths | None, catalog: Catalog
) -> RoutingTable:
    """The table with the decision-time costs a router with answer-length model ``lengths``
    sees (its predicted answer lengths in place of each model's typical one)."""
    if lengths is None:
        return table
    answer_tokens = lengths.predict(features, table.models)
    costs = expected_costs(table.prompts, table.models, catalog, answer_tokens=answer_tokens)
    return replace(table, expected_cost_usd=costs)


def _priced(rows: pd.DataFrame, catalog: Catalog, notes: list[str]) -> pd.Series:
    """Recorded costs, with missing ones estimated from the catalog (and counted in ``notes``)."""
    cost = rows["cost_usd"].astype(float).copy()
    missing = cost.isna()
    if not missing.any():
        return cost
    for index in rows.index[missing]:
        row = rows.loc[index]
        info = catalog.get(row["model"])
        input_tokens = row.get("input_tokens")
        output_tokens = row.get("output_tokens")
        if input_tokens is None or pd.isna(input_tokens):
            input_tokens = estimate_tokens(row["prompt"])
        if output_tokens is None or pd.isna(output_tokens):
            output_tokens = info.typical_output_tokens or 0
        cost.loc[index] = info.cost_usd(float(input_tokens), float(output_tokens))
    notes.append(
        f"{int(missing.sum())} of {len(rows)} rows had no cost_usd and were priced from the "
        "catalog (token counts estimated from the prompt and the model's typical answer length)"
    )
    return cost


def sweep_per_prompt(
    table: RoutingTable, p_pass: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cost and quality of every prompt's choice at every setting of the router's two knobs:
    two (settings x n) arrays, the THRESHOLDS of the threshold rule first, then the value
    rule's values (VALUE_MULTIPLES of the mean expected cost)."""
    rows = np.arange(len(table.prompts))
    choices = [choose(p_pass, table.expected_cost_usd, t)[0] for t in THRESHOLDS]
    unit = float(np.nanmean(table.expected_cost_usd))
    choices += [choose_by_value(p_pass, table.expected_cost_usd, m * unit) for m in VALUE_MULTIPLES]
    costs = [table.cost_usd[rows, chosen] for chosen in choices]
    qualities = [score[rows, chosen] for chosen in choices]
    return np.asarray(costs), np.asarray(qualities)


def sweep(table: RoutingTable, p_pass: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(cost, quality) at every setting of sweep_per_prompt (thresholds first)."""
    costs, qualities = sweep_per_prompt(table, p_pass, score)
    return np.column_stack([costs.mean(axis=1), qualities.mean(axis=1)])


def oracle_points(table: RoutingTable, score: np.ndarray) -> np.ndarray:
    """The per-prompt oracle traded against cost: argmax(score - lambda * cost) over lambda."""
    rows = np.arange(len(table.prompts))
    unit = table.cost_usd / max(float(np.mean(table.cost_usd)), 1e-12)
    points = []
    for lam in np.concatenate([[0.0], np.geomspace(1e-4, 1e4, 161)]):
        value = score - lam * unit - 1e-9 * unit  # cheaper on ties
        chosen = value.argmax(axis=1)
        points.append((table.cost_usd[rows, chosen].mean(), score[rows, chosen].mean()))
    cheapest = table.cost_usd.argmin(axis=1)
    points.append((table.cost_usd[rows, cheapest].mean(), score[rows, cheapest].mean()))
    return np.asarray(points)


def _at_threshold(points: np.ndarray, threshold: float) -> tuple[float, float]:
    index = THRESHOLDS.index(round(threshold, 2))
    return float(points[index, 1]), float(points[index, 0])


def _two_model_scores(p_pass: np.ndarray, strong: int, weak: int) -> np.ndarray:
    """The order in which the threshold rule moves prompts to the strong model as t rises.

    A prompt goes to the strong model once the threshold passes P(weak), and only if the strong
    model is the more likely to pass; otherwise it never does.
    """
    return np.where(p_pass[:, strong] > p_pass[:, weak], 1.0 - p_pass[:, weak], -1.0)


def _two_model_metrics(curve: tuple[np.ndarray, np.ndarray], r_weak: float, r_strong: float):
    strong_pct, quality = curve
    if r_strong == r_weak:
        return {"apgr": None, "cpt50": None, "cpt80": None}
    return {
        "apgr": metrics.apgr(strong_pct, quality, r_weak, r_strong),
        "cpt50": metrics.cpt(strong_pct, quality, r_weak, r_strong, 0.5),
        "cpt80": metrics.cpt(strong_pct, quality, r_weak, r_strong, 0.8),
    }


@dataclass
class Evaluation:
    """The result: the JSON document and the curves behind it (for plots)."""

    report: dict[str, Any]
    curves: dict[str, np.ndarray]
    hulls: dict[str, np.ndarray]
    notes: list[str]


def evaluate(
    table: RoutingTable,
    router: LearnedRouter,
    p_learned: np.ndarray,
    bar: float = 0.5,
    reference: str | None = None,
    metric: str = "passed",
) -> Evaluation:
    """Evaluate the learned router (its P(pass) given) against every baseline on ``table``."""
    score = table.score(bar, metric)
    models = table.models
    single = {
        m: (float(table.cost_usd[:, j].mean()), float(score[:, j].mean()))
        for j, m in enumerate(models)
    }
    if reference is None:
        reference = max(models, key=lambda m: (single[m][1], -single[m][0]))
    elif reference not in models:
        raise EvaluationError(f"reference model {reference!r} is not among the routed models")
    ref_cost, ref_quality = single[reference]

    p_heuristic = HeuristicRouter().p_pass(table.prompts, models, table.expected_cost_usd)
    curves: dict[str, np.ndarray] = {
        "learned": sweep(table, p_learned, score),
        "heuristic": sweep(table, p_heuristic, score),
    }
    random_runs = []
    for seed in RANDOM_SEEDS:
        p_random = np.random.default_rng(seed).uniform(size=score.shape)
        random_runs.append(sweep(table, p_random, score))
    curves["random"] = np.mean(random_runs, axis=0)
    curves["oracle"] = oracle_points(table, score)
    curves["zero"] = np.array([single[m] for m in models])
    for m in models:
        curves[f"model:{m}"] = np.array([single[m]])

    hulls = {
        name: metrics.non_decreasing_convex_hull(c[:, 0], c[:, 1]) for name, c in curves.items()
    }
    all_costs = np.concatenate([c[:, 0] for c in curves.values()])
    cost_min, cost_max = float(all_costs.min()), float(all_costs.max())

    learned_quality, learned_cost = _at_threshold(curves["learned"], router.default_threshold)
    operating = {
        "learned": (learned_quality, learned_cost),
        "heuristic": _at_threshold(curves["heuristic"], 0.5),
        "random": _at_threshold(curves["random"], 0.5),
        "zero": (metrics.hull_quality_at(hulls["zero"], learned_cost), learned_cost),
        "oracle": (float(curves["oracle"][0, 1]), float(curves["oracle"][0, 0])),
    }
    operating.update({f"model:{m}": (single[m][1], single[m][0]) for m in models})

    two_model = len(models) == 2
    if two_model:
        strong = int(np.argmax([single[m][0] for m in models]))
        weak = 1 - strong
        r_strong, r_weak = single[models[strong]][1], single[models[weak]][1]
        y_strong, y_weak = score[:, strong], score[:, weak]
        two = {
            "learned": metrics.threshold_curve(
                _two_model_scores(p_learned, strong, weak), y_strong, y_weak
            ),
            "heuristic": metrics.threshold_curve(
                _two_model_scores(p_heuristic, strong, weak), y_strong, y_weak
            ),
            "random": metrics.random_curve(y_strong, y_weak),
            "oracle": metrics.oracle_curve(y_strong, y_weak),
            "zero": (np.array([0.0, 100.0]), np.array([r_weak, r_strong])),
        }

    routers: dict[str, Any] = {}
    for name, (quality, cost) in operating.items():
        hull = hulls[name]
        ratios: dict[str, float | None] = {}
        for fraction in PARITY:
            at = metrics.cost_at_quality(hull, float(fraction) * ref_quality)
            ratios[fraction] = None if at is None or ref_cost <= 0 else at / ref_cost
        entry: dict[str, Any] = {
            "quality": quality,
            "cost_usd": cost,
            "aiq": metrics.aiq(hull, cost_min, cost_max),
            "cost_ratio_at_quality": ratios,
            "apgr": None,
            "cpt50": None,
            "cpt80": None,
        }
        if two_model and name in two:
            entry.update(_two_model_metrics(two[name], r_weak, r_strong))
        routers[name] = entry

    report = {
        "n_prompts": len(table.prompts),
        "models": list(models),
        "bar": bar,
        "reference_model": reference,
        "routers": routers,
    }
    return Evaluation(report=report, curves=curves, hulls=hulls, notes=list(table.notes))


def shared_models(
    outcomes: pd.DataFrame, router: LearnedRouter, catalog: Catalog, requested: Sequence[str] | None
) -> list[str]:
    """The models both the outcomes and the router know, narrowed to ``requested`` if given.

    Unknown or unpriced models are named in the error or warning, never silently dropped.
    """
    in_file = set(outcomes["model"])
    known = set(router.models)
    if requested:
        missing = [m for m in requested if m not in in_file]
        unscored = [m for m in requested if m not in known]
        if missing:
            raise EvaluationError(f"--models: not in the outcomes file: {', '.join(missing)}")
        if unscored:
            raise EvaluationError(f"--models: the router has no scorer for: {', '.join(unscored)}")
        candidates = list(dict.fromkeys(requested))
    else:
        candidates = sorted(in_file & known)
        ignored = sorted(in_file - known)
        if ignored:
            log.warning("models in the file that the router does not score: %s", ", ".join(ignored))
    priced = []
    for model in candidates:
        if model not in catalog or not catalog.get(model).priced:
            rows = outcomes[(outcomes["model"] == model) & outcomes["cost_usd"].isna()]
            if not rows.empty:
                log.warning(
                    "model %s has no price in the catalog and %d rows without cost_usd "
                    "(first: row %d, column 'cost_usd'); it is left out",
                    model,
                    len(rows),
                    int(rows.index[0]) + 1,
                )
                continue
        priced.append(model)
    if len(priced) < 2:
        raise EvaluationError(
            f"need at least two priced models shared by the file and the router, got {priced}"
        )
    return priced
