"""Leave-one-model-out onboarding: how well a model joins the router from k graded prompts.

For each held-out model: a factorized scorer is fitted on the training split without any of the
model's outcomes; the model is then onboarded from k of its training prompts (k = 0: its prior,
from price, family and public rating; and, for comparison, the plain population mean), five
random draws of the k prompts each; and measured on its source's test split: the AUC of its
P(pass) over its own test prompts, and the AIQ and cost at 95 % of the router that routes among
the source's models with the onboarded one included. Beside it, the all-data router (fitted with
the model's training outcomes). All on training data only for fitting and test data only for
measuring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.features import Featurizer
from service.routing.learned import LearnedRouter
from training.evaluate import evaluate
from training.learners import LEARNERS
from training.train import (
    DEFAULT_BAR,
    SourceEvaluation,
    evaluation_sets,
    fit_prior,
    training_data,
)

log = logging.getLogger(__name__)
HELD_OUT = {
    "openai/gpt-4-1106-preview": "routerbench-subset",
    "mistralai/mixtral-8x7b-instruct": "routerbench-subset",
    "anthropic/claude-2": "routerbench-subset",
    "meta-llama/llama-3.1-8b-instruct": "llmrouter",
    "openai/gpt-4o-2024-08-06": "zeroeval",
    "anthropic/claude-3.5-sonnet": "zeroeval",
}
KS = (0, 10, 25, 50, 100, 200)
SEEDS = 5


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties counted half); None with one class only."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        return None
    ranks = pd.Series(np.concatenate([positive, negative])).rank().to_numpy()[: len(positive)]
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks.sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class Measured:
    auc: float | None
    aiq: float
    cost_at_95: float | None


def _measure(router: LearnedRouter, data: SourceEvaluation, model: str) -> Measured:
    p = router.p_pass(data.table.prompts, data.models, features=data.features)
    passed = (data.table.quality >= DEFAULT_BAR).astype(float)
    column = data.models.index(model)
    report = evaluate(data.table, router, p, bar=DEFAULT_BAR).report["routers"]["learned"]
    return Measured(
        auc(p[:, column], passed[:, column]),
        float(report["aiq"]),
        report["cost_ratio_at_quality"]["0.95"],
    )


def fitted(
    table: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    sources: Sequence[str],
    seed: int = 0,
) -> LearnedRouter:
    """The factorized scorer (and its prior) fitted on the training split of ``table``."""
    data = training_data(table, ["train"], sources, DEFAULT_BAR)
    X = featurizer.transform(data.prompts)
    scorer = LEARNERS["factorized"](featurizer.embedder.dim, seed)
    scorer.fit(X, data.prompt_index, data.model_index, data.passed)
    prior, ratings = fit_prior(scorer, data.models, catalog)
    return LearnedRouter(scorer, data.models, featurizer.embedder.name, DEFAULT_BAR, 0.5,
                         prior=prior, ratings=ratings)  # fmt: skip


def held_out_model(
    outcomes: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    model: str,
    source: str,
    sources: Sequence[str],
    everything: LearnedRouter,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows of the table for one held-out model: every k and seed, the prior, and the
    all-data router ``everything`` (``fitted`` on every model's training outcomes)."""
    train_rows = outcomes[outcomes["split"] == "train"]
    (test_set,) = evaluation_sets(outcomes, "test", [source], featurizer, catalog)
    if model not in test_set.models:
        raise ValueError(f"{model} is not routed in {source}'s test set")
    rows: list[dict[str, Any]] = []
    measured = _measure(everything, test_set, model)
    rows.append({"model": model, "k": "all data", "seed": None, **measured.__dict__})
    without = fitted(train_rows[train_rows["model"] != model], featurizer, catalog, sources, seed)
    own = train_rows[(train_rows["model"] == model) & (train_rows["source"].isin(sources))]
    own = own.drop_duplicates("prompt_id")
    features = featurizer.transform(list(own["prompt"]))
    passed = (own["quality"].to_numpy() >= DEFAULT_BAR).astype(float)
    population = (without.scorer.a_mean_, without.scorer.b_mean_)
    for label, (a0, b0) in {
        "0 (population mean)": population,
        "0 (prior)": without.prior_of(model, catalog),
    }.items():
        router = _with_abilities(without, model, a0, b0, 0)
        rows.append({"model": model, "k": label, "seed": None,
                     **_measure(router, test_set, model).__dict__})  # fmt: skip
    prior_a, prior_b = without.prior_of(model, catalog)
    rng = np.random.default_rng(seed)
    for k in KS[1:]:
        if k > len(own):
            continue
        for draw in range(SEEDS):
            pick = rng.choice(len(own), size=k, replace=False)
            fit = without.scorer.fit_abilities(features[pick], passed[pick], prior_a, prior_b)
            router = _with_abilities(without, model, fit.ability, fit.offset, k)
            rows.append({"model": model, "k": k, "seed": draw,
                         **_measure(router, test_set, model).__dict__})  # fmt: skip
    return rows


def _with_abilities(
    router: LearnedRouter, model: str, ability: np.ndarray, offset: float, graded: int
) -> LearnedRouter:
    import copy

    from service.routing.factorized import AbilityFit

    scorer = copy.deepcopy(router.scorer)
    scorer.with_model(AbilityFit(np.asarray(ability), float(offset), graded))
    return router.derived(scorer, [*router.models, model])


def summarize(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean AUC, AIQ and cost at 95 % per (model, k), over the draws."""
    table = pd.DataFrame(rows)
    table["cost_at_95"] = pd.to_numeric(table["cost_at_95"], errors="coerce")
    return table.groupby(["model", "k"], sort=False)[["auc", "aiq", "cost_at_95"]].mean()
