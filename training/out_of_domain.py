"""Routing on prompts unlike the training sets: the evaluation-only sets, never trained on.

RouteLLM's MT-Bench, MMLU and GSM8K (GPT-4-1106 against Mixtral-8x7B), zeroeval's GSM8K (RouteLLM's
questions, late-2024 models) and AlpacaEval 1 (chat instructions, judge preferences over
text-davinci-003; CC BY-NC 4.0). Each is a routing table with cached features, evaluated for
every scorer beside the heuristic, zero, random and oracle routers; in-domain test sets go
through the same summary so that the gap between them shows at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.features import Featurizer
from service.routing.learned import LearnedRouter
from training.evaluate import RoutingTable, evaluate, routing_table, with_answer_lengths
from training.sources import LICENSES
from training.sources.alpaca_eval import LICENSE as ALPACA_LICENSE
from training.sources.alpaca_eval import SOURCE as ALPACA

STRONG = "openai/gpt-4-1106-preview"
WEAK = "mistralai/mixtral-8x7b-instruct"
BASELINES = ("heuristic", "zero", "random", "oracle")


@dataclass
class EvaluationSet:
    """A routing table with its features, and how its quality is read."""

    name: str
    table: RoutingTable
    features: np.ndarray
    metric: str = "passed"  # or "quality": the mean score itself (MT-Bench's judge scores)
    license: str = ""
    domain: str = "out"  # "in": a training source's test split


def _evaluation_set(
    name: str,
    rows: pd.DataFrame,
    models: list[str],
    featurizer: Featurizer,
    catalog: Catalog,
    router: LearnedRouter,
    **more: str,
) -> EvaluationSet:
    table = routing_table(rows, models, catalog)
    features = featurizer.transform(table.prompts, show_progress=len(table.prompts) > 500)
    table = with_answer_lengths(table, features, router.answer_lengths, catalog)
    return EvaluationSet(name, table, features, **more)


def out_of_domain_sets(
    outcomes: pd.DataFrame,
    alpaca: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    router: LearnedRouter,
) -> list[EvaluationSet]:
    from training.train import evaluation_models

    sets = []
    routellm = outcomes[(outcomes["source"] == "routellm") & outcomes["model"].isin([STRONG, WEAK])]
    for task in ("mt-bench", "mmlu", "gsm8k"):
        sets.append(
            _evaluation_set(
                f"routellm {task}",
                routellm[routellm["task"] == task],
                [WEAK, STRONG],
                featurizer,
                catalog,
                router,
                metric="quality" if task == "mt-bench" else "passed",
                license=LICENSES["routellm"],
            )
        )
    gsm8k = outcomes[outcomes["source"] == "zeroeval-gsm8k"]
    sets.append(
        _evaluation_set(
            "zeroeval gsm8k",
            gsm8k,
            evaluation_models(outcomes, "zeroeval-gsm8k", catalog),
            featurizer,
            catalog,
            router,
            license=LICENSES["zeroeval-gsm8k"],
        )
    )
    sets.append(
        _evaluation_set(
            "alpaca-eval",
            alpaca,
            evaluation_models(alpaca, ALPACA, catalog),
            featurizer,
            catalog,
            router,
            license=ALPACA_LICENSE,
        )
    )
    return sets


def scored(
    data: EvaluationSet, routers: Mapping[str, LearnedRouter], catalog: Catalog, bar: float
) -> tuple[dict[str, dict | None], str]:
    """Per router (and baseline): AIQ, cost at 95 % of the reference, quality at the default
    operating point, APGR on two-model sets. None for a scorer that cannot score the set's
    models (a per-model scorer without outcomes of one of them). Also the set's reference
    model (its best single model)."""
    found: dict[str, dict | None] = {}
    baselines: dict | None = None
    for name, router in routers.items():
        try:
            p = router.p_pass(
                data.table.prompts, data.table.models, features=data.features, catalog=catalog
            )
        except KeyError:
            found[name] = None
            continue
        report = evaluate(data.table, router, p, bar=bar, metric=data.metric).report
        found[name] = report["routers"]["learned"]
        if baselines is None:
            baselines = report
    if baselines is not None:
        for name in BASELINES:
            found[name] = baselines["routers"][name]
    return found, (baselines or {}).get("reference_model", "-")
