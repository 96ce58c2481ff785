"""Train the learned router: fit every candidate learner on ``train``, choose on ``val``, refit.

Each candidate is scored by its mean AIQ over the validation sets (one per source, each routed
among the models that source evaluated). The choice follows the one-standard-error rule: the
simplest candidate (LEARNERS is ordered from simplest and cheapest to serve) whose mean AIQ is
within one bootstrap standard error of the best one's (paired bootstrap over validation
prompts). The chosen learner is refit on train + val, and its default threshold is the cheapest
one that keeps 95 % of the best single model's quality on validation. Test results are computed
after the choice, for the model card only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from service.catalog import Catalog
from service.features import Featurizer
from service.routing.learned import AnswerLengths, LearnedRouter
from service.routing.priors import AbilityPrior, covariates
from service.tokens import estimate_tokens
from training import datasets, metrics
from training.capabilities import arena_ratings
from training.evaluate import (
    THRESHOLDS,
    Evaluation,
    evaluate,
    routing_table,
    sweep_per_prompt,
    with_answer_lengths,
)
from training.learners import LEARNERS
from training.provenance import code_version
from training.sources.zeroeval import UNKNOWN_COST

log = logging.getLogger(__name__)

SHIPPED_SOURCES = ["routerbench-subset", "llmrouter", "routerarena", "zeroeval"]
DEFAULT_BAR = 0.5
TARGET_SHARE_OF_BEST = 0.95
BOOTSTRAP_REPLICATES = 200
EVALUATED_SHARE = 0.9  # of a source's prompts, for a model to be in its routing set


@dataclass
class TrainingData:
    """(prompt, model, passed) triples as indices into ``prompts`` and ``models``."""

    models: list[str]
    prompts: list[str]
    prompt_index: np.ndarray
    model_index: np.ndarray
    passed: np.ndarray
    answer_tokens: np.ndarray  # per row: the answer's length where recorded, else NaN


def recorded_answer_tokens(rows: pd.DataFrame) -> np.ndarray:
    """Per row, ``output_tokens``, else the recorded answer's estimated tokens, else NaN."""
    tokens = np.full(len(rows), np.nan)
    if "output_tokens" in rows:
        tokens = pd.to_numeric(rows["output_tokens"], errors="coerce").to_numpy(float)
    if "response" in rows:
        from_text = [estimate_tokens(r) if isinstance(r, str) else np.nan for r in rows["response"]]
        tokens = np.where(np.isnan(tokens), np.asarray(from_text, dtype=float), tokens)
    return tokens


def training_data(
    outcomes: pd.DataFrame, splits: Sequence[str], sources: Sequence[str], bar: float
) -> TrainingData:
    rows = outcomes[outcomes["split"].isin(splits) & outcomes["source"].isin(sources)]
    if rows.empty:
        raise ValueError(f"no outcomes in splits {list(splits)} of sources {list(sources)}")
    models = sorted(rows["model"].unique())
    prompt_ids = list(dict.fromkeys(rows["prompt_id"]))
    position = {pid: i for i, pid in enumerate(prompt_ids)}
    prompts = rows.drop_duplicates("prompt_id").set_index("prompt_id").loc[prompt_ids, "prompt"]
    return TrainingData(
        models=models,
        prompts=list(prompts),
        prompt_index=rows["prompt_id"].map(position).to_numpy(),
        model_index=rows["model"].map({m: j for j, m in enumerate(models)}).to_numpy(),
        passed=(rows["quality"] >= bar).to_numpy(int),
        answer_tokens=recorded_answer_tokens(rows),
    )


def evaluation_models(
    outcomes: pd.DataFrame, source: str, catalog: Catalog | None = None
) -> list[str]:
    """The models a source evaluated on at least 90 % of its prompts: its routing set; with
    ``catalog``, only those with a price (a cost to route on) that the data does not
    understate (``zeroeval.UNKNOWN_COST``)."""
    rows = outcomes[outcomes["source"] == source]
    share = rows.groupby("model")["prompt_id"].nunique() / rows["prompt_id"].nunique()
    models = sorted(share.index[share >= EVALUATED_SHARE])
    if catalog is None:
        return models
    return [m for m in models if m in catalog and catalog.get(m).priced and m not in UNKNOWN_COST]


@dataclass
class SourceEvaluation:
    """One source's evaluation set with its features cached for scoring many routers."""

    source: str
    models: list[str]
    table: Any
    features: np.ndarray


def evaluation_sets(
    outcomes: pd.DataFrame,
    split: str,
    sources: Sequence[str],
    featurizer: Featurizer,
    catalog: Catalog,
    answer_lengths: AnswerLengths | None = None,
) -> list[SourceEvaluation]:
    """Per source, its ``split`` as a routing table, with decision-time costs from
    ``answer_lengths`` when given (else from each model's typical answer length)."""
    sets = []
    for source in sources:
        rows = outcomes[(outcomes["split"] == split) & (outcomes["source"] == source)]
        if rows.empty:
            continue
        models = evaluation_models(outcomes, source, catalog)
        table = routing_table(rows, models, catalog)
        features = featurizer.transform(table.prompts)
        table = with_answer_lengths(table, features, answer_lengths, catalog)
        sets.append(SourceEvaluation(source, models, table, features))
    return sets


def fit_answer_lengths(data: TrainingData, X: np.ndarray) -> AnswerLengths:
    """Each model's answer-length model, fit on the training rows that record an answer."""
    return AnswerLengths(data.models).fit(
        X, data.prompt_index, data.model_index, data.answer_tokens
    )


def default_threshold(evaluations: Sequence[Evaluation]) -> float:
    """The cheapest threshold whose mean share of the best model's quality is >= 95 %."""
    relative = []
    for ev in evaluations:
        reference = ev.report["routers"][f"model:{ev.report['reference_model']}"]
        curve = ev.curves["learned"][: len(THRESHOLDS)]  # the threshold rule's settings
        relative.append(
            np.column_stack(
                [curve[:, 0] / reference["cost_usd"], curve[:, 1] / reference["quality"]]
            )
        )
    mean = np.mean(relative, axis=0)
    ok = np.flatnonzero(mean[:, 1] >= TARGET_SHARE_OF_BEST)
    index = ok[np.argmin(mean[ok, 0])] if len(ok) else int(np.argmax(mean[:, 1]))
    return float(THRESHOLDS[index])


def summary(evaluations: Sequence[Evaluation], sets: Sequence[SourceEvaluation], p_sets) -> dict:
    """Per-source AIQ and savings of the learned and heuristic routers, plus calibration."""
    out: dict[str, Any] = {"sources": {}}
    probabilities, labels = [], []
    for ev, data, p in zip(evaluations, sets, p_sets, strict=True):
        routers = ev.report["routers"]
        out["sources"][data.source] = {
            "n_prompts": ev.report["n_prompts"],
            "models": len(data.models),
            "reference_model": ev.report["reference_model"],
            **{
                name: {
                    "aiq": routers[name]["aiq"],
                    "cost_ratio_at_95": routers[name]["cost_ratio_at_quality"]["0.95"],
                    "cost_ratio_at_100": routers[name]["cost_ratio_at_quality"]["1.0"],
                }
                for name in ("learned", "heuristic", "zero", "oracle")
            },
        }
        probabilities.append(p.ravel())
        labels.append((data.table.quality >= ev.report["bar"]).astype(float).ravel())
    p_all, y_all = np.concatenate(probabilities), np.concatenate(labels)
    eps = 1e-6
    clipped = np.clip(p_all, eps, 1 - eps)
    out["mean_aiq"] = float(np.mean([s["learned"]["aiq"] for s in out["sources"].values()]))
    out["mean_heuristic_aiq"] = float(
        np.mean([s["heuristic"]["aiq"] for s in out["sources"].values()])
    )
    out["log_loss"] = float(-np.mean(y_all * np.log(clipped) + (1 - y_all) * np.log(1 - clipped)))
    out["ece"] = metrics.expected_calibration_error(p_all, y_all)
    return out


def score_sets(
    router: LearnedRouter, sets: Sequence[SourceEvaluation], bar: float
) -> tuple[list[Evaluation], list[np.ndarray]]:
    evaluations, probabilities = [], []
    for data in sets:
        p = router.p_pass(data.table.prompts, data.models, features=data.features)
        evaluations.append(evaluate(data.table, router, p, bar=bar))
        probabilities.append(p)
    return evaluations, probabilities


def _cost_ranges(evaluations: dict[str, list[Evaluation]]) -> list[tuple[float, float]]:
    """Per source, the cost range of every curve of every candidate: one AIQ scale for all."""
    ranges = []
    for per_source in zip(*evaluations.values(), strict=True):
        costs = np.concatenate([c[:, 0] for ev in per_source for c in ev.curves.values()])
        ranges.append((float(costs.min()), float(costs.max())))
    return ranges


def bootstrap_mean_aiq(
    per_prompt: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    ranges: Sequence[tuple[float, float]],
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Mean AIQ over sources for each learner: on all validation prompts (element 0), then on
    ``replicates`` resamples of them, the same resample for every learner (paired)."""
    rng = np.random.default_rng(seed)
    sizes = [costs.shape[1] for costs, _ in next(iter(per_prompt.values()))]
    out = {name: np.zeros(replicates + 1) for name in per_prompt}
    for b in range(replicates + 1):
        samples = [np.arange(n) if b == 0 else rng.integers(0, n, n) for n in sizes]
        for name, sources in per_prompt.items():
            values = []
            for (costs, qualities), idx, (low, high) in zip(sources, samples, ranges, strict=True):
                hull = metrics.non_decreasing_convex_hull(
                    costs[:, idx].mean(axis=1), qualities[:, idx].mean(axis=1)
                )
                values.append(metrics.aiq(hull, low, high))
            out[name][b] = np.mean(values)
    return out


def one_standard_error_choice(
    candidates: dict[str, dict], replicates: dict[str, np.ndarray]
) -> str:
    """The first (simplest) learner whose mean AIQ is within one SE of the best's."""
    best = max(candidates, key=lambda name: replicates[name][0])
    for name in candidates:  # in LEARNERS order: simplest first
        gap = float(replicates[best][0] - replicates[name][0])
        diffs = replicates[best][1:] - replicates[name][1:]
        candidates[name]["aiq_gap_to_best"] = gap
        candidates[name]["aiq_gap_standard_error"] = float(np.std(diffs, ddof=1))
    for name in candidates:
        if candidates[name]["aiq_gap_to_best"] <= candidates[name]["aiq_gap_standard_error"]:
            return name
    return best


@dataclass
class TrainResult:
    router: LearnedRouter
    chosen: str
    candidates: dict[str, dict] = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    val_evaluations: list[Evaluation] = field(default_factory=list)
    test_evaluations: list[Evaluation] = field(default_factory=list)
    test_probabilities: list[np.ndarray] = field(default_factory=list)
    test_sets: list[SourceEvaluation] = field(default_factory=list)

    @property
    def beats_heuristic(self) -> bool:
        val = self.candidates[self.chosen]
        return bool(val["mean_aiq"] > val["mean_heuristic_aiq"])


def fit_prior(
    scorer: Any, models: Sequence[str], catalog: Catalog
) -> tuple[AbilityPrior | None, dict[str, float]]:
    """The prior of models without graded answers (service.routing.priors), fitted on the
    abilities of the scorer's models weighted by their graded prompts; None for a scorer that
    cannot score new models."""
    if not hasattr(scorer, "abilities_"):
        return None, {}
    ratings = arena_ratings(datasets.RAW_DIR, catalog)
    rows = np.vstack([covariates(m, catalog, ratings) for m in models])
    prior = AbilityPrior().fit(
        rows, scorer.abilities_, scorer.offsets_, np.sqrt(scorer.graded_prompts_)
    )
    return prior, ratings


def fit_scorer(
    learner: str, data: TrainingData, X: np.ndarray, seed: int, embedding_dim: int
) -> Any:
    scorer = LEARNERS[learner](embedding_dim, seed)
    return scorer.fit(X, data.prompt_index, data.model_index, data.passed)


def train(
    outcomes: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    learners: Sequence[str] | None = None,
    sources: Sequence[str] = SHIPPED_SOURCES,
    bar: float = DEFAULT_BAR,
    seed: int = 0,
    progress: bool = True,
    extra_training_sources: Sequence[str] = (),
    shrinkage: float | None = None,
) -> TrainResult:
    """Fit, compare on validation, refit the winner on train + val, and evaluate it on test.

    ``extra_training_sources`` (logged traffic) add training rows but no evaluation sets: their
    prompts have one rated model each, not the full table evaluation needs. The router also
    gets its OOD score and its shrinkage toward the base rates (training/shrinkage.py): chosen
    leave-one-source-out when ``shrinkage`` is None (one more fit of the factorized scorer per
    source), else the given one.
    """
    learners = list(learners or LEARNERS)
    unknown = [name for name in learners if name not in LEARNERS]
    if unknown:
        raise ValueError(f"unknown learner(s) {unknown}; choose from {sorted(LEARNERS)}")
    embedding_dim = featurizer.embedder.dim
    fit_sources = [*sources, *extra_training_sources]
    data = training_data(outcomes, ["train"], fit_sources, bar)
    log.info("embedding %d training prompts", len(data.prompts))
    X = featurizer.transform(data.prompts, show_progress=progress)
    val_sets = evaluation_sets(
        outcomes, "val", sources, featurizer, catalog, fit_answer_lengths(data, X)
    )

    candidates: dict[str, dict] = {}
    val_evaluations: dict[str, list[Evaluation]] = {}
    per_prompt: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for learner in tqdm(learners, desc="learners", disable=not progress):
        started = time.perf_counter()
        scorer = fit_scorer(learner, data, X, seed, embedding_dim)
        router = LearnedRouter(scorer, data.models, featurizer.embedder.name, bar)
        evaluations, probabilities = score_sets(router, val_sets, bar)
        candidates[learner] = summary(evaluations, val_sets, probabilities)
        candidates[learner]["fit_seconds"] = time.perf_counter() - started
        val_evaluations[learner] = evaluations
        per_prompt[learner] = [
            sweep_per_prompt(d.table, p, d.table.score(bar, "passed"))
            for d, p in zip(val_sets, probabilities, strict=True)
        ]
        log.info("%s: mean val AIQ %.4f", learner, candidates[learner]["mean_aiq"])
    ranges = _cost_ranges(val_evaluations)
    chosen = one_standard_error_choice(
        candidates, bootstrap_mean_aiq(per_prompt, ranges, seed=seed)
    )
    threshold = default_threshold(val_evaluations[chosen])

    full = training_data(outcomes, ["train", "val"], fit_sources, bar)
    X_full = featurizer.transform(full.prompts, show_progress=progress)
    scorer = fit_scorer(chosen, full, X_full, seed, embedding_dim)
    metadata = {
        "version": datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "learner": chosen,
        "sources": fit_sources,
        "data_sha256": datasets.table_hash(outcomes),
        "code_version": code_version(),
        "training_prompts": len(full.prompts),
        "training_rows": len(full.passed),
        "graded_prompts": dict(
            zip(
                full.models,
                np.bincount(full.model_index, minlength=len(full.models)).tolist(),
                strict=True,
            )
        ),
        "seed": seed,
    }
    lengths = fit_answer_lengths(full, X_full)
    prior, ratings = fit_prior(scorer, full.models, catalog)
    router = LearnedRouter(
        scorer, full.models, featurizer.embedder.name, bar, threshold, metadata, lengths, prior,
        ratings,
    )  # fmt: skip
    from training.shrinkage import out_of_domain_parts

    metadata["out_of_domain"] = out_of_domain_parts(
        outcomes, featurizer, catalog, sources, router, shrinkage, seed
    )
    test_sets = evaluation_sets(outcomes, "test", sources, featurizer, catalog, lengths)
    test_evaluations, test_probabilities = score_sets(router, test_sets, bar)
    result = TrainResult(
        router=router,
        chosen=chosen,
        candidates=candidates,
        test=summary(test_evaluations, test_sets, test_probabilities),
        val_evaluations=val_evaluations[chosen],
        test_evaluations=test_evaluations,
        test_probabilities=test_probabilities,
        test_sets=test_sets,
    )
    router.metadata["validation"] = candidates
    router.metadata["test"] = result.test
    router.metadata["beats_heuristic_on_validation"] = result.beats_heuristic
    return result
