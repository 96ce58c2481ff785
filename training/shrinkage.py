"""How far P(pass) shrinks toward each model's base rate away from the training prompts.

The router's P(pass) becomes ``(1 - w) p + w base`` with ``w = min(1, shrinkage x ood_score)``
and ``base`` the model's mean P(pass) on the prompt's nearest training prompts
(service/routing/learned.py). ``shrinkage`` is chosen on leave-one-source-out validation
(training/loso.py): each fold's router, fitted without one source, is measured on that
source's validation split (out of domain) and on the other sources' validation splits (in
domain); the objective is the mean over folds of the two halves' log loss of P(pass), so that
a shrinkage that helps far prompts but costs near ones is weighed against it. Log loss, a
proper scoring rule, counts calibration as well as ranking: a shrinkage chosen on AIQ alone
ranked as well but left P(pass) miscalibrated where the scorer was right (docs/RESULTS.md).
Ties go to the smaller shrinkage. AIQ at every shrinkage is kept beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from service.catalog import Catalog
from service.features import Featurizer
from service.routing.learned import BaseRate, LearnedRouter
from service.routing.ood import OutOfDomainScore
from training import metrics
from training.evaluate import evaluate, sweep
from training.loso import HeldOutSource
from training.train import SourceEvaluation, evaluation_sets

log = logging.getLogger(__name__)
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def fit_ood(
    outcomes: pd.DataFrame, featurizer: Featurizer, sources: Sequence[str], seed: int = 0
) -> OutOfDomainScore:
    """The OOD score fitted on the training and validation prompts of ``sources``."""
    prompts = outcomes[outcomes["source"].isin(sources)].drop_duplicates("prompt_id")
    by_split = {
        split: {
            s: featurizer.transform(
                list(prompts[(prompts["source"] == s) & (prompts["split"] == split)]["prompt"])
            )
            for s in sources
        }
        for split in ("train", "val")
    }
    return OutOfDomainScore(featurizer.embedder.dim, seed=seed).fit(
        by_split["train"], by_split["val"]
    )


@dataclass
class Choice:
    shrinkage: float
    # per shrinkage, the mean over folds of: log loss on the held-out source's validation
    # split, on the other sources' (their mean), and the same two as AIQ
    objective: dict[float, tuple[float, float, float, float]] = field(default_factory=dict)


@dataclass
class Measured:
    """One validation set at every shrinkage of the grid."""

    log_loss: dict[float, float]
    aiq: dict[float, float]


def measured_by_shrinkage(
    router: LearnedRouter,
    data: SourceEvaluation,
    catalog: Catalog,
    grid: Sequence[float],
    base: BaseRate = "nearest",
) -> Measured:
    """The router's log loss of P(pass) and AIQ on ``data`` at every shrinkage of ``grid``
    (the baselines' curves swept once, only the router's own curve per shrinkage)."""
    assert router.ood is not None
    table, bar = data.table, router.bar
    raw = router.p_pass(table.prompts, data.models, features=data.features, catalog=catalog,
                        shrink=False)  # fmt: skip
    near = router.ood.assess(data.features)
    curves = evaluate(table, router, raw, bar=bar).curves
    others = np.concatenate([c[:, 0] for n, c in curves.items() if n != "learned"])
    score = table.score(bar, "passed")
    found = Measured({}, {})
    for weight in grid:
        p = router.shrunk(raw, near, data.models, catalog, weight, base)
        curve = sweep(table, p, score)
        hull = metrics.non_decreasing_convex_hull(curve[:, 0], curve[:, 1])
        costs = np.concatenate([others, curve[:, 0]])
        found.aiq[weight] = float(metrics.aiq(hull, float(costs.min()), float(costs.max())))
        found.log_loss[weight] = float(log_loss(score.ravel(), p.ravel(), labels=[0, 1]))
    return found


def choose_shrinkage(
    folds: Sequence[HeldOutSource],
    outcomes: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    sources: Sequence[str],
    grid: Sequence[float] = GRID,
    base: BaseRate = "nearest",
) -> Choice:
    """The shrinkage with the lowest leave-one-source-out validation log loss. Each fold's
    router gets an OOD score fitted without its held-out source."""
    rows: dict[float, list[tuple[float, float, float, float]]] = {w: [] for w in grid}
    for fold in folds:
        others = [s for s in sources if s != fold.source]
        fold.router.ood = fit_ood(outcomes, featurizer, others)
        lengths = fold.router.answer_lengths
        near = evaluation_sets(outcomes, "val", others, featurizer, catalog, lengths)
        far = measured_by_shrinkage(fold.router, fold.val, catalog, grid, base)
        close = [measured_by_shrinkage(fold.router, d, catalog, grid, base) for d in near]
        for w in grid:
            rows[w].append((
                far.log_loss[w], float(np.mean([c.log_loss[w] for c in close])),
                far.aiq[w], float(np.mean([c.aiq[w] for c in close])),
            ))  # fmt: skip
            log.info("shrinkage %.2f without %s: log loss far %.4f near %.4f, AIQ far %.4f "
                     "near %.4f", w, fold.source, *rows[w][-1])  # fmt: skip
    objective = {}
    for w, r in rows.items():
        far_loss, near_loss, far_aiq, near_aiq = (float(x) for x in np.mean(r, axis=0))
        objective[w] = (far_loss, near_loss, far_aiq, near_aiq)
    best = min(grid, key=lambda w: (round((objective[w][0] + objective[w][1]) / 2, 4), w))
    return Choice(best, objective)


def out_of_domain_parts(
    outcomes: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    sources: Sequence[str],
    router: LearnedRouter,
    shrinkage: float | None = None,
    seed: int = 0,
) -> dict:
    """Give ``router`` its OOD score (fitted on every source) and its shrinkage: ``shrinkage``
    when given, else chosen leave-one-source-out (for a scorer that can onboard a held-out
    source's models); returns what was chosen and measured, for the router's metadata."""
    with_val = [
        s for s in sources if ((outcomes["source"] == s) & (outcomes["split"] == "val")).any()
    ]
    if len(with_val) < 2:
        return {"ood": "not fitted: it needs validation prompts of two sources or more"}
    router.ood = fit_ood(outcomes, featurizer, sources, seed)
    report: dict = {"ood_auroc_held_out_source": router.ood.auroc_}
    if shrinkage is not None:
        router.shrinkage = report["shrinkage"] = shrinkage
        report["shrinkage_reason"] = "given, not chosen"
        return report
    if not router.open:
        report["shrinkage"] = 0.0
        report["shrinkage_reason"] = "its scorer cannot onboard a held-out source's models"
        return report
    from training.loso import held_out_sources

    folds = held_out_sources(
        outcomes, featurizer, catalog, with_val, router.default_threshold, seed
    )
    choice = choose_shrinkage(folds, outcomes, featurizer, catalog, with_val)
    router.shrinkage = choice.shrinkage
    report["shrinkage"] = choice.shrinkage
    report["shrinkage_objective"] = {
        str(w): {
            "held_out_source_val_log_loss": far_loss,
            "in_domain_val_log_loss": near_loss,
            "held_out_source_val_aiq": far,
            "in_domain_val_aiq": near,
        }
        for w, (far_loss, near_loss, far, near) in choice.objective.items()
    }
    return report
