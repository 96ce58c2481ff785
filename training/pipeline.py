"""The commands' work: train and export the shipped router, evaluate a file, route a prompt."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.config import REPO_ROOT, Settings, cache_dir
from service.features import EmbeddingCache, Featurizer
from service.routing.decision import route
from service.routing.learned import DEFAULT_EMBEDDER, EMBEDDERS, LearnedRouter
from training import datasets, plots, versions
from training.evaluate import (
    Evaluation,
    evaluate,
    routing_table,
    shared_models,
    with_answer_lengths,
)
from training.onboard import Onboarding, keep, onboard
from training.outcomes import OutcomesError, check_models, load_aliases, read_outcomes
from training.traffic import held_out_removed
from training.train import SHIPPED_SOURCES, train
from training.versions import Written

USER_SOURCE = "user"
MIN_EVALUATION_PROMPTS = 20

SHIPPED_ROUTER_DIR = REPO_ROOT / "models" / "router"  # what `make results` reports on


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


def user_outcomes(
    path: Path, catalog: Catalog, public: pd.DataFrame, aliases_path: Path | None = None
) -> pd.DataFrame:
    """A user's outcomes file as rows of the outcomes table (source ``user``): models checked
    against the catalog, prompts of the public held-out sets and of AlpacaEval left out (they
    stay evaluation sets), splits as the file gives them or by the prompt id (15 % test, 15 %
    val)."""
    table = read_outcomes(path, load_aliases(aliases_path))
    check_models(table, catalog, path)
    table = held_out_removed(table, public, [datasets.load_alpaca_eval()]).copy()
    if table.empty:
        raise OutcomesError(f"{path}: every prompt is in a public held-out set")
    fraction = table["prompt_id"].map(
        lambda pid: int(hashlib.sha256(str(pid).encode()).hexdigest()[:8], 16) / 16**8
    )
    by_hash = np.where(fraction < 0.15, "test", np.where(fraction < 0.30, "val", "train"))
    given = table["split"].where(table["split"].isin(["train", "val", "test"]))
    table["split"] = given.fillna(pd.Series(by_hash, index=table.index))
    table["source"] = USER_SOURCE
    for column in datasets.COLUMNS:
        if column not in table:
            table[column] = None
    return table[datasets.COLUMNS]


def _complete_prompts(table: pd.DataFrame, split: str) -> int:
    rows = table[table["split"] == split]
    models = rows["model"].nunique()
    return int((rows.groupby("prompt_id")["model"].nunique() == models).sum())


def train_version(
    runs_dir: Path,
    router_dir: Path,
    catalog: Catalog,
    learners: Sequence[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    log_mlflow: bool = True,
    outcomes_path: Path = datasets.OUTCOMES_PATH,
    featurizer: Featurizer | None = None,
    embedder: str = DEFAULT_EMBEDDER,
    user_file: Path | None = None,
    public: bool = True,
    install: bool = False,
    aliases_path: Path | None = None,
    shrinkage: float | None = None,
) -> dict[str, Any]:
    """``switchboard train``: a whole new router (on the shipped data, a user's outcomes, or
    both) as a new version under ``runs_dir``, with its card and plots, logged to MLflow, and
    installed into ``router_dir`` only when ``install``."""
    if embedder not in EMBEDDERS:
        raise ValueError(f"unknown embedder {embedder!r}; choose from {sorted(EMBEDDERS)}")
    shipped = datasets.load(outcomes_path)
    if sample:
        shipped = sample_outcomes(shipped, sample)
    tables = [shipped] if public else []
    sources = list(SHIPPED_SOURCES) if public else []
    extra: list[str] = []
    if user_file is not None:
        user = user_outcomes(user_file, catalog, shipped, aliases_path)
        tables.append(user)
        evaluable = min(_complete_prompts(user, "val"), _complete_prompts(user, "test"))
        (sources if evaluable >= MIN_EVALUATION_PROMPTS else extra).append(USER_SOURCE)
    if not sources:
        raise ValueError(
            f"with --no-public the outcomes file must grade at least {MIN_EVALUATION_PROMPTS} "
            "val and test prompts on every one of its models, to choose and test a router"
        )
    outcomes = pd.concat(tables, ignore_index=True)
    featurizer = featurizer or cached_featurizer(embedder)
    result = train(
        outcomes, featurizer, catalog, learners, sources, seed=seed, extra_training_sources=extra,
        shrinkage=shrinkage,
    )  # fmt: skip

    def plots_of(directory: Path) -> list[Path]:
        files = []
        for evaluation, data in zip(result.test_evaluations, result.test_sets, strict=True):
            path = directory / f"test-cost-quality-{data.source}.png"
            files.append(plots.cost_quality(evaluation, path, f"test: {data.source}"))
        p = np.concatenate([p.ravel() for p in result.test_probabilities])
        y = np.concatenate(
            [(d.table.quality >= result.router.bar).astype(float).ravel() for d in result.test_sets]
        )
        files.append(plots.calibration(p, y, directory / "test-calibration.png", "test: P(pass)"))
        return files

    params = {
        "learners": ",".join(result.candidates),
        "bar": result.router.bar,
        "seed": seed,
        "sample": sample or 0,
        "sources": ",".join([*sources, *extra]),
        "embedder": result.router.embedder_name,
        "outcomes_file": str(user_file or ""),
    }
    written = versions.write(
        result.router, "train", runs_dir, params, plots_of, user_file or outcomes_path, log_mlflow
    )
    summary: dict[str, Any] = {
        "version": written.version,
        "path": str(written.path),
        "learner": result.chosen,
        "default_threshold": result.router.default_threshold,
        "validation_mean_aiq": {n: c["mean_aiq"] for n, c in result.candidates.items()},
        "heuristic_validation_mean_aiq": result.candidates[result.chosen]["mean_heuristic_aiq"],
        "beats_heuristic_on_validation": result.beats_heuristic,
        "test": result.test,
        "mlflow": written.mlflow,
    }
    if install:
        summary["install"] = versions.install(written, router_dir)
    return summary


def onboard_version(
    outcomes_file: Path,
    runs_dir: Path,
    router_dir: Path,
    catalog: Catalog,
    snapshots_dir: Path,
    refit: bool = False,
    install: bool = True,
    log_mlflow: bool = True,
    aliases_path: Path | None = None,
    router: LearnedRouter | None = None,
) -> tuple[Onboarding, Written | None, dict[str, Any] | None]:
    """``switchboard models onboard``: the file's models onboarded into the installed router
    (or ``router``) as a new version, kept for later retraining, and installed unless told not
    to. No version is written when no model was onboarded."""
    table = read_outcomes(outcomes_file, load_aliases(aliases_path))
    check_models(table, catalog, outcomes_file)
    parent = router or load_router(router_dir)
    result = onboard(parent, table, cached_featurizer(parent.embedder_name), catalog, refit)
    if not result.onboarded:
        return result, None, None
    kept_at = keep(table[table["model"].isin(result.onboarded)], snapshots_dir)
    result.router.metadata["onboarded_from"] = str(kept_at)
    params = {"outcomes_file": str(outcomes_file), "refit": refit, "parent": parent.version}
    written = versions.write(
        result.router, "onboard", runs_dir, params, None, outcomes_file, log_mlflow
    )
    installed = versions.install(written, router_dir) if install else None
    return result, written, installed


def load_router(directory: Path | None) -> LearnedRouter:
    """The router in ``directory`` (default ``SWITCHBOARD_ROUTER_DIR``)."""
    directory = Path(directory or Settings().router_dir)
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
    catalog = Catalog.load(Settings().catalog_path)
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
        router,
        Catalog.load(Settings().catalog_path),
        prompt,
        threshold,
        allowed_models,
        max_cost_usd,
        answer_value_usd,
    )
    return asdict(decision)
