"""How often the off-policy intervals (training/offpolicy.py) cover the truth, on simulated logs
whose truth is known: the outcomes table holds every model's graded answer to every prompt of a
source, so any policy's pass rate and cost on those prompts can be computed exactly.

The simulated service: a logging router fitted on the source's training prompts (per model, a
logistic regression of passing on the prompt's text features and task) routes at
``logging_threshold`` by the threshold rule, and explores with the gateway's own
``service.routing.exploration.explore`` (its hash draws, its propensities). Each replication
draws ``size`` requests from the held-out (validation and test) prompts with replacement, serves
them, rates every answer with the benchmark's grade (passed: 0 or 1) and estimates, from the
logged requests alone, four policies:

- ``logged``: the logging router without exploration;
- ``threshold T``: the logging router at another threshold (``other_threshold``);
- ``heuristic``: the heuristic router by each request's logged rule (as ``eval --logged`` does);
- ``second router``: another router, each task's pass rate of each model on the training
  prompts (smoothed), at ``second_threshold``.

The truth of a policy is its mean pass rate (and cost) over all held-out prompts, the population
the requests are drawn from. An interval covers when the truth is inside it; coverage counts a
withheld estimate as a miss when its effective sample size was at or above the minimum (it
should have been given), and leaves out the ones withheld below it.

``python -m training.offpolicy_check [--replications 200] [--sizes 500,2000]`` prints the table
that docs/CLOSED_LOOP.md quotes; ``tests/test_offpolicy.py`` runs the same check.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from service.features import text_features
from service.routing.exploration import explore
from training.offpolicy import (
    MIN_EFFECTIVE_SAMPLE_SIZE,
    LoggedArrays,
    OffPolicy,
    heuristic_policy,
    logged_policy,
    threshold_policy,
)

SOURCE = "routerbench-subset"
BAR = 0.5  # passed = quality >= bar
METHODS = ("ips", "dr")


@dataclass
class World:
    """A source's held-out prompts as the simulated service sees them."""

    models: list[str]
    passed: np.ndarray  # prompts x models: 1.0 when the model's answer passed
    cost: np.ndarray  # prompts x models: the answer's actual cost (USD)
    p_pass: np.ndarray  # the logging router's P(pass)
    expected_cost: np.ndarray  # what the simulated gateway expects each answer to cost
    choices: dict[str, np.ndarray]  # policy -> model index per prompt (no exploration)

    def truth(self, policy: str) -> dict[str, float]:
        rows = np.arange(len(self.passed))
        chosen = self.choices[policy]
        return {
            "quality": float(self.passed[rows, chosen].mean()),
            "cost_usd": float(self.cost[rows, chosen].mean()),
        }


def _complete(outcomes: pd.DataFrame, source: str) -> pd.DataFrame:
    rows = outcomes[(outcomes["source"] == source)]
    rows = rows[rows["quality"].notna() & rows["cost_usd"].notna()]
    if rows.empty:
        raise ValueError(f"the outcomes table has no graded, priced answers of source {source!r}")
    per_prompt = rows.groupby("prompt_id")["model"].nunique()
    complete = per_prompt[per_prompt == rows["model"].nunique()].index
    return rows[rows["prompt_id"].isin(set(complete))]


def _fit_logging_router(features: np.ndarray, passed: np.ndarray, train: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = np.empty(passed.shape)
    for j in range(passed.shape[1]):
        labels = passed[train, j]
        if labels.min() == labels.max():  # always or never passes: its rate
            p[:, j] = labels.mean()
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(features[train], labels)
        p[:, j] = model.predict_proba(features)[:, 1]
    return p


def _table(
    meta: pd.DataFrame, models: list[str], p_pass: np.ndarray, expected: np.ndarray, t: float
) -> pd.DataFrame:
    """The held-out prompts as logged requests: candidates with P(pass) and expected cost."""
    return pd.DataFrame(
        {
            "prompt": meta["prompt"].tolist(),
            "candidates": [
                [
                    {"model": m, "p_pass": float(p_pass[i, j]), "expected_cost_usd": expected[i, j]}
                    for j, m in enumerate(models)
                ]
                for i in range(len(meta))
            ],
            "threshold": t,
            "answer_value_usd": None,
        }
    )


def build_world(
    outcomes: pd.DataFrame,
    source: str = SOURCE,
    logging_threshold: float = 0.7,
    other_threshold: float = 0.9,
    second_threshold: float = 0.7,
) -> World:
    """The simulated service on ``source``: routers fitted on its training prompts, the
    held-out prompts as traffic, every policy's choice on each of them."""
    rows = _complete(outcomes, source)
    models = sorted(rows["model"].unique())
    quality = rows.pivot_table(index="prompt_id", columns="model", values="quality")[models]
    actual = rows.pivot_table(index="prompt_id", columns="model", values="cost_usd")[models]
    meta = rows.drop_duplicates("prompt_id").set_index("prompt_id").loc[quality.index]
    train = (meta["split"] == "train").to_numpy()
    if train.sum() < 50 or (~train).sum() < 50:
        raise ValueError(f"{source}: too few complete prompts to fit on and to simulate traffic")
    passed = (quality.to_numpy() >= BAR).astype(float)
    tasks = pd.get_dummies(meta["task"]).to_numpy(float)
    features = np.hstack([text_features(meta["prompt"].tolist()), tasks])
    p_pass = _fit_logging_router(features, passed, train)
    by_task = pd.DataFrame(actual.to_numpy()[train], index=meta["task"][train])
    expected = by_task.groupby(level=0).mean().reindex(meta["task"]).to_numpy()
    expected = np.where(np.isnan(expected), np.nanmean(actual.to_numpy(), axis=0), expected)
    passes = pd.DataFrame(passed[train], index=meta["task"][train]).groupby(level=0)
    task_rate = ((passes.sum() + 1) / (passes.count() + 2)).reindex(meta["task"]).to_numpy()
    task_rate = np.where(np.isnan(task_rate), passed[train].mean(axis=0), task_rate)

    held_out = ~train
    meta, passed, actual_cost = meta[held_out], passed[held_out], actual.to_numpy()[held_out]
    p_pass, expected, task_rate = p_pass[held_out], expected[held_out], task_rate[held_out]
    logged = _table(meta, models, p_pass, expected, logging_threshold)
    second = _table(meta, models, task_rate, expected, logging_threshold)
    index = {m: j for j, m in enumerate(models)}
    named = {
        "logged": logged_policy()(logged),
        f"threshold {other_threshold:g}": threshold_policy(other_threshold)(logged),
        "heuristic": heuristic_policy()(logged),
        "second router": threshold_policy(second_threshold)(second),
    }
    choices = {k: np.array([index[m] for m in v], dtype=int) for k, v in named.items()}
    return World(models, passed, actual_cost, p_pass, expected, choices)


def simulate(
    world: World, size: int, exploration: float, rng: np.random.Generator, tag: str
) -> tuple[LoggedArrays, np.ndarray]:
    """``size`` requests served by the exploring logging router: the logged arrays and the
    prompt each request was."""
    prompts = rng.integers(0, len(world.passed), size)
    decision = world.choices["logged"][prompts]
    names = [str(j) for j in range(len(world.models))]  # every model is priced: all explorable
    served, propensity = np.empty(size, dtype=int), np.empty(size)
    for i in range(size):
        chosen, propensity[i] = explore(f"{tag}-{i}", names[decision[i]], names, exploration)
        served[i] = int(chosen)
    arrays = LoggedArrays(
        models=world.models,
        served=served,
        propensity=propensity,
        decision=decision,
        explored=served != decision,
        p_pass=world.p_pass[prompts],
        expected_cost=world.expected_cost[prompts],
        quality=world.passed[prompts, served],
        cost=world.cost[prompts, served],
        fold=rng.integers(0, 2, size),
    )
    return arrays, prompts


@dataclass
class Tally:
    replications: int = 0
    covered: int = 0
    withheld: int = 0  # below the minimum effective sample size: left out of the coverage
    missed_withheld: int = 0  # withheld at or above it: a miss
    widths: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)

    @property
    def judged(self) -> int:
        return self.replications - self.withheld

    @property
    def coverage(self) -> float | None:
        return self.covered / self.judged if self.judged else None

    def add(self, estimate: dict[str, Any], truth: float, minimum: float) -> None:
        self.replications += 1
        self.ess.append(estimate["effective_sample_size"])
        if estimate["value"] is None:
            if estimate["effective_sample_size"] >= minimum:
                self.missed_withheld += 1
            else:
                self.withheld += 1
            return
        self.covered += estimate["ci_low"] <= truth <= estimate["ci_high"]
        self.widths.append(estimate["ci_high"] - estimate["ci_low"])
        self.errors.append(estimate["value"] - truth)

    def summary(self) -> dict[str, Any]:
        return {
            "replications": self.replications,
            "estimated": self.judged - self.missed_withheld,
            "withheld": self.withheld,
            "missed_withheld": self.missed_withheld,
            "coverage": self.coverage,
            "median_effective_sample_size": float(np.median(self.ess)) if self.ess else None,
            "mean_width": float(np.mean(self.widths)) if self.widths else None,
            "bias": float(np.mean(self.errors)) if self.errors else None,
            "rmse": float(np.sqrt(np.mean(np.square(self.errors)))) if self.errors else None,
        }


def coverage(
    world: World,
    sizes: Sequence[int] = (500, 2000),
    replications: int = 200,
    exploration: float = 0.2,
    seed: int = 0,
    min_effective_sample_size: float = MIN_EFFECTIVE_SAMPLE_SIZE,
) -> dict[str, Any]:
    """Per size, policy, metric and method: how often the 95 % interval covered the truth."""
    if replications < 1 or not sizes or min(sizes) < 2:
        raise ValueError("need at least one replication and sizes of at least 2 requests")
    if not 0 < exploration <= 1:
        raise ValueError("the exploration rate must be in (0, 1]")
    truths = {policy: world.truth(policy) for policy in world.choices}
    tallies: dict[tuple[int, str, str, str], Tally] = {}
    for size in sizes:
        rng = np.random.default_rng([seed, size])
        for r in range(replications):
            arrays, prompts = simulate(world, size, exploration, rng, f"sim-{seed}-{size}-{r}")
            estimator = OffPolicy(arrays, min_effective_sample_size)
            for policy, chosen in world.choices.items():
                result = estimator.evaluate(chosen[prompts])
                for metric in ("quality", "cost_usd"):
                    for method in METHODS:
                        tally = tallies.setdefault((size, policy, metric, method), Tally())
                        tally.add(
                            result[metric][method],
                            truths[policy][metric],
                            min_effective_sample_size,
                        )
    return {
        "exploration": exploration,
        "replications": replications,
        "min_effective_sample_size": min_effective_sample_size,
        "truth": truths,
        "cells": [
            {"size": s, "policy": p, "metric": m, "method": k, **t.summary()}
            for (s, p, m, k), t in tallies.items()
        ],
    }


def markdown(report: dict[str, Any], metric: str = "quality") -> str:
    """The coverage table of one metric."""
    lines = [
        "| requests | policy | true | method | estimated | withheld | coverage | "
        "median ESS | mean width |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cell in report["cells"]:
        if cell["metric"] != metric:
            continue
        cov = "-" if cell["coverage"] is None else f"{cell['coverage']:.3f}"
        width = "-" if cell["mean_width"] is None else f"{cell['mean_width']:.3g}"
        truth = report["truth"][cell["policy"]][metric]
        withheld = f"{cell['withheld']}" + (
            f" (+{cell['missed_withheld']} missed)" if cell["missed_withheld"] else ""
        )
        lines.append(
            f"| {cell['size']:,} | {cell['policy']} | {truth:.4g} | {cell['method']} | "
            f"{cell['estimated']} | {withheld} | {cov} | "
            f"{cell['median_effective_sample_size']:.0f} | {width} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replications", type=int, default=200)
    parser.add_argument("--sizes", default="500,2000", help="comma-separated request counts")
    parser.add_argument("--exploration", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=SOURCE)
    args = parser.parse_args(argv)
    from training import datasets

    started = time.perf_counter()
    world = build_world(datasets.load(), args.source)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report = coverage(world, sizes, args.replications, args.exploration, args.seed)
    print(
        f"{args.source}: {len(world.passed)} held-out prompts, {len(world.models)} models, "
        f"exploration {args.exploration:g}, {args.replications} replications per size, "
        f"minimum effective sample size {report['min_effective_sample_size']:g}"
    )
    logged = world.choices["logged"]
    for policy, chosen in world.choices.items():
        print(
            f"{policy}: chooses what the logged router would on "
            f"{(chosen == logged).mean():.0%} of the prompts"
        )
    for metric in ("quality", "cost_usd"):
        print(f"\n{'pass rate' if metric == 'quality' else 'cost per request (USD)'}\n")
        print(markdown(report, metric))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
