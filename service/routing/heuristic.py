"""The heuristic complexity router: the baseline the learned router must beat.

A prompt's complexity in [0, 1] comes from its length and its code, math, reasoning and
instruction cues. Candidates fall into three price tiers (cheap, mid, frontier: terciles of their
expected cost for the prompt) with strengths 1/3, 2/3 and 1. A model's score is
``sigmoid(8 * (strength - complexity))``, so at threshold 0.5 the decision rule sends a prompt to
the cheapest model of the lowest tier whose strength covers its complexity, and other thresholds
move the tier boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.features import TEXT_FEATURE_NAMES, text_features

SLOPE = 8.0
TIER_STRENGTHS = (1 / 3, 2 / 3, 1.0)
_COLUMN = {name: i for i, name in enumerate(TEXT_FEATURE_NAMES)}
# weights of each cue; each cue is squashed to [0, 1] first
CUE_WEIGHTS = {
    "length": 0.30,
    "code_cues": 0.20,
    "math_cues": 0.20,
    "reasoning_cues": 0.20,
    "instruction_cues": 0.10,
}
LONG_PROMPT_CHARS = 4000


def complexity(prompts: Sequence[str]) -> np.ndarray:
    """Complexity score in [0, 1] of each prompt."""
    features = text_features(prompts)
    length = np.clip(features[:, _COLUMN["log_chars"]] / math.log1p(LONG_PROMPT_CHARS), 0, 1)
    score = CUE_WEIGHTS["length"] * length
    for cue in ("code_cues", "math_cues", "reasoning_cues", "instruction_cues"):
        # log1p(count) of 1.1 is three hits: treat three or more as a full cue
        score = score + CUE_WEIGHTS[cue] * np.clip(features[:, _COLUMN[cue]] / math.log1p(3), 0, 1)
    return np.clip(score, 0.0, 1.0)


def tier_strengths(cost_usd: np.ndarray) -> np.ndarray:
    """Strength of each candidate per prompt from its price tercile (NaN cost -> strength 0)."""
    strengths = np.zeros_like(cost_usd, dtype=float)
    for i, row in enumerate(cost_usd):
        priced = ~np.isnan(row)
        if not priced.any():
            continue
        ranks = row[priced].argsort().argsort()
        share = (ranks + 1) / priced.sum()  # in (0, 1], the most expensive at 1
        tier = np.minimum((np.ceil(share * 3) - 1).astype(int), 2)
        strengths[i, priced] = np.asarray(TIER_STRENGTHS)[tier]
    return strengths


class HeuristicRouter:
    """Complexity cues mapped to price tiers; scores any priced model without training."""

    name = "heuristic"
    version = "1"

    def p_pass(
        self,
        prompts: Sequence[str],
        models: Sequence[str],
        cost_usd: np.ndarray,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Pseudo-probabilities (prompts x models) that the decision rule thresholds."""
        gap = tier_strengths(cost_usd) - complexity(prompts)[:, None]
        return 1.0 / (1.0 + np.exp(-SLOPE * gap))
