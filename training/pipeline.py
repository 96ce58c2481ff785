"""The commands' work: train and export the shipped router, evaluate a file, route a prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.config import REPO_ROOT, cache_dir
from service.features import EmbeddingCache, Featurizer
from service.routing.decision import route
from service.routing.learned import DEFAULT_EMBEDDER, EMBEDDERS, LearnedRouter
from training import datasets, model_card, plots
from training.evaluate import (
    Evaluation,
    evaluate,
    routing_table,
    shared_models,
    with_answer_lengths,
)
from training.outcomes import read_outcomes
from training.train import SHIPPED_SOURCES, train

DEFAULT_ROUTER_DIR = REPO_ROOT / "models" / "router"


def cached_featurizer(embedder_name: str) -> Featurizer:
    """The router's featurizer, with the on-disk embedding cache when the embedder is slow."""
    embedder = EMBEDDERS[embedder_name]()
    if getattr(embedder, "worth_caching", False):
        return Featurizer(embedder, EmbeddingCache(cache_dir() / "embeddings"))
    return Featurizer(embedder)


def sample_outcomes(outcomes: pd.DataFrame, per_group: int) -> pd.DataFrame:
    """At most ``per_group`` prompts of each (source, split), the same ones every time."""
    prompts = outcomes.drop_duplicates("prompt_id").sort_values("prompt_id")
    keep = prompts.groupby(["source", "split"]).head(per_group)["prompt_id"]
    return outcomes[outcomes["prompt_id"].isin(set(keep))]


def train_and_export(
    output: Path,
    learners: Sequence[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    log_mlflow: bool = True,
    outcomes_path: Path = datasets.OUTCOMES_PATH,
    featurizer: Featurizer | None = None,
    embedder: str = DEFAULT_EMBEDDER,
) -> dict[str, Any]:
    """Train on the shipped outcomes, write the router with its card and plots, log to MLflow."""
    if embedder not in EMBEDDERS:
        raise ValueError(f"unknown embedder {embedder!r}; choose from {sorted(EMBEDDERS)}")
    outcomes = datasets.load(outcomes_path)
    if sample:
        outcomes = sample_outcomes(outcomes, sample)
    catalog = Catalog.load()
    featurizer = featurizer or cached_featurizer(embedder)
    result = train(outcomes, featurizer, catalog, learners, SHIPPED_SOURCES, seed=seed)
    output = Path(output)
    result.router.save(output)
    artifacts = [model_card.write(result.router, output)]
    for evaluation, data in zip(result.test_evaluations, result.test_sets, strict=True):
        path = output / f"test-cost-quality-{data.source}.png"
        artifacts.append(plots.cost_quality(evaluation, path, f"test: {data.source}"))
    p = np.concatenate([p.ravel() for p in result.test_probabilities])
    y = np.concatenate(
        [(d.table.quality >= result.router.bar).astype(float).ravel() for d in result.test_sets]
    )
    artifacts.append(plots.calibration(p, y, output / "test-calibration.png", "test: P(pass)"))
    summary: dict[str, Any] = {
        "router": str(output),
        "version": result.router.version,
        "learner": result.chosen,
        "default_threshold": result.router.default_threshold,
        "validation_mean_aiq": {n: c["mean_aiq"] for n, c in result.candidates.items()},
        "heuristic_validation_mean_aiq": result.candidates[result.chosen]["mean_heuristic_aiq"],
        "beats_heuristic_on_validation": result.beats_heuristic,
        "test": result.test,
    }
    if log_mlflow:
        from training import tracking

        params = {
            "learners": ",".join(result.candidates),
            "bar": result.router.bar,
            "seed": seed,
            "sample": sample or 0,
            "sources": ",".join(SHIPPED_SOURCES),
            "embedder": result.router.embedder_name,
        }
        summary["mlflow"] = tracking.log_training(
            result.router, output, artifacts, params, outcomes_path, result.beats_heuristic
        )
    return summary


def load_router(directory: Path | None) -> LearnedRouter:
    directory = Path(directory or DEFAULT_ROUTER_DIR)
    if not (directory / "router.json").exists():
        raise ValueError(f"no router in {directory}: run `switchboard train` first")
    return LearnedRouter.load(directory)


def evaluate_file(
    path: Path,
    router_dir: Path | None = None,
    models: Sequence[str] | None = None,
    bar: float = 0.5,
    reference: str | None = None,
    metric: str = "passed",
) -> Evaluation:
    """``switchboard eval``: the learned router and every baseline on an outcomes file."""
    outcomes = read_outcomes(path)
    router = load_router(router_dir)
    catalog = Catalog.load()
    routed = shared_models(outcomes, router, catalog, models)
    table = routing_table(outcomes, routed, catalog)
    features = cached_featurizer(router.embedder_name).transform(
        table.prompts, show_progress=len(table.prompts) > 500
    )
    table = with_answer_lengths(table, features, router.answer_lengths, catalog)
    p = router.p_pass(table.prompts, routed, features=features)
    return evaluate(table, router, p, bar=bar, reference=reference, metric=metric)


def route_prompt(
    prompt: str,
    threshold: float | None = None,
    allowed_models: Sequence[str] | None = None,
    max_cost_usd: float | None = None,
    router_dir: Path | None = None,
    answer_value_usd: float | None = None,
) -> dict[str, Any]:
    """``switchboard route``: the decision for one prompt as a JSON-ready dict."""
    router = load_router(router_dir)
    decision = route(
        router, Catalog.load(), prompt, threshold, allowed_models, max_cost_usd, answer_value_usd
    )
    return asdict(decision)
