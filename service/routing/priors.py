"""Prior abilities for a model with no graded answers: the population, shifted by what is known.

What is known of any catalog model: its prompt and completion prices, its provider family (the
id's prefix) and, for some, its public LMArena overall rating (datasets/raw/capability-priors,
matched to OpenRouter ids through the alias table). A ridge regression from these covariates
to the fitted abilities (a_m, b_m) of the router's models predicts a new model's; with no
covariate known it is the population mean. ``AbilityPrior`` is fitted in training and stored in
the router, so the service can score any catalog model on its prior.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from service.catalog import Catalog

FAMILIES = ("openai", "anthropic", "google", "meta-llama", "mistralai", "qwen", "nvidia")
RATING_SCALE = 100.0  # LMArena points per unit of the covariate
COVARIATES = (
    ["log_prompt_price", "log_completion_price", "unpriced", "rating", "unrated"]
    + [f"family:{f}" for f in FAMILIES]
    + ["family:other"]
)


def covariates(model: str, catalog: Catalog | None, ratings: Mapping[str, float]) -> np.ndarray:
    """The covariate row of ``model`` (columns as in COVARIATES; missing values as 0 with a
    flag)."""
    info = catalog.get(model) if catalog is not None and model in catalog else None
    prompt = completion = 0.0
    priced = info is not None and info.priced
    if info is not None and priced:
        prompt = math.log10(max(info.prompt_usd_per_token or 0.0, 1e-9)) + 6  # per million
        completion = math.log10(max(info.completion_usd_per_token or 0.0, 1e-9)) + 6
    rating = ratings.get(model)
    family = model.split("/", 1)[0] if "/" in model else ""
    row = [prompt, completion, 0.0 if priced else 1.0]
    row += [0.0, 1.0] if rating is None else [(rating - 1200.0) / RATING_SCALE, 0.0]
    row += [1.0 if family == f else 0.0 for f in FAMILIES]
    row.append(0.0 if family in FAMILIES else 1.0)
    return np.asarray(row, dtype=float)


class AbilityPrior:
    """Ridge regression of (ability, offset) on covariates, toward the population mean."""

    def __init__(self, alpha: float = 3.0):
        self.alpha = alpha

    def fit(
        self,
        covariate_rows: np.ndarray,
        abilities: np.ndarray,
        offsets: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> AbilityPrior:
        """One row per fitted model; ``weights`` (e.g. its graded prompts) weigh how much each
        model's abilities are to be believed."""
        targets = np.column_stack([abilities, offsets])
        w = np.ones(len(targets)) if weights is None else np.asarray(weights, dtype=float)
        w = w / w.sum()
        self.target_mean_ = w @ targets
        self.covariate_mean_ = w @ covariate_rows
        C = covariate_rows - self.covariate_mean_
        T = targets - self.target_mean_
        gram = C.T @ (w[:, None] * C) + self.alpha / len(targets) * np.eye(C.shape[1])
        self.coef_ = np.linalg.solve(gram, C.T @ (w[:, None] * T))
        return self

    def predict(self, covariate_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(abilities, offsets) for each covariate row."""
        out = (np.atleast_2d(covariate_rows) - self.covariate_mean_) @ self.coef_
        out += self.target_mean_
        return out[:, :-1], out[:, -1]


def prior_abilities(
    prior: AbilityPrior | None,
    models: Sequence[str],
    catalog: Catalog | None,
    ratings: Mapping[str, float],
    population: tuple[np.ndarray, float],
) -> tuple[np.ndarray, np.ndarray]:
    """(abilities, offsets) of ``models`` on their prior (the population mean without one)."""
    if prior is None:
        a, b = population
        return np.tile(a, (len(models), 1)), np.full(len(models), b)
    rows = np.vstack([covariates(m, catalog, ratings) for m in models])
    return prior.predict(rows)
