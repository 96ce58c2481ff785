"""Leave one source out: does the prompt projection g carry to a kind of prompt it never saw?

For each training source: the factorized scorer (and its prior) is fitted on the training
split of the other sources only; the source's models that the others do not have are then
onboarded from ``K`` graded training prompts each (the same ``K`` prompts for every model, a
seeded draw), as a user would onboard a model; and the router is measured on the source's
validation split (where the shrinkage toward the base rate is fitted) and its test split
(reported). No prompt of the held-out source shapes g.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.features import Featurizer
from service.routing.learned import LearnedRouter
from training.onboard import onboard
from training.onboarding_eval import fitted
from training.train import SourceEvaluation, evaluation_sets

log = logging.getLogger(__name__)
K = 50


@dataclass
class HeldOutSource:
    source: str
    router: LearnedRouter  # fitted without the source, its models onboarded from K prompts
    val: SourceEvaluation
    test: SourceEvaluation
    onboarded: list[str]


def held_out_source(
    outcomes: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    source: str,
    sources: Sequence[str],
    default_threshold: float,
    seed: int = 0,
) -> HeldOutSource:
    others = [s for s in sources if s != source]
    log.info("leave out %s: fitting on %s", source, ", ".join(others))
    router = fitted(outcomes, featurizer, catalog, others, seed)
    router.default_threshold = default_threshold
    own = outcomes[(outcomes["source"] == source) & (outcomes["split"] == "train")]
    prompt_ids = sorted(own["prompt_id"].unique())
    rng = np.random.default_rng(seed)
    picked = set(rng.choice(prompt_ids, size=min(K, len(prompt_ids)), replace=False))
    graded = own[own["prompt_id"].isin(picked) & ~own["model"].isin(router.models)]
    result = onboard(router, graded, featurizer, catalog)
    val, test = (
        evaluation_sets(outcomes, split, [source], featurizer, catalog, router.answer_lengths)[0]
        for split in ("val", "test")
    )
    return HeldOutSource(source, result.router, val, test, result.onboarded)


def held_out_sources(
    outcomes: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    sources: Sequence[str],
    default_threshold: float,
    seed: int = 0,
) -> list[HeldOutSource]:
    return [
        held_out_source(outcomes, featurizer, catalog, s, sources, default_threshold, seed)
        for s in sources
    ]
