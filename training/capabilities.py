"""Public aggregate scores of models (datasets/raw/capability-priors): priors, not outcomes.

LMArena's overall text rating, the latest non-zero one of each model in the history file (up to
2025-02), keyed by OpenRouter id. Names map through the catalog's alias table (case aside) and,
for LMArena's own spellings of models the table already knows, ``ARENA_NAMES``; a name that maps
to no catalog id is left out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from service.catalog import ALIASES, Catalog

RATINGS_FILE = Path("capability-priors") / "lmarena_overall_rating_history.csv"
# LMArena's names for models whose OpenRouter ids are known; each the same model, not a newer one
ARENA_NAMES = {
    "llama-3.1-405b-instruct": "meta-llama/llama-3.1-405b-instruct",
    "llama-3.1-70b-instruct": "meta-llama/llama-3.1-70b-instruct",
    "llama-3-70b-instruct": "meta-llama/llama-3-70b-instruct",
    "llama-3-8b-instruct": "meta-llama/llama-3-8b-instruct",
    "llama-2-70b-chat": "meta-llama/llama-2-70b-chat",
    "codellama-34b-instruct": "meta-llama/codellama-34b-instruct",
    "mixtral-8x7b-instruct-v0.1": "mistralai/mixtral-8x7b-instruct",
    "mixtral-8x22b-instruct-v0.1": "mistralai/mixtral-8x22b-instruct",
    "mistral-7b-instruct": "mistralai/mistral-7b-instruct-v0.1",
    "mistral-large-2407": "mistralai/mistral-large-2407",
    "qwen2.5-72b-instruct": "qwen/qwen-2.5-72b-instruct",
    "qwen2-72b-instruct": "qwen/qwen-2-72b-instruct",
    "yi-34b-chat": "01-ai/yi-34b-chat",
    "claude-2.0": "anthropic/claude-2",
    "claude-instant-1": "anthropic/claude-instant-1",
    "claude-1": "anthropic/claude-1",
    "wizardlm-13b": "wizardlm/wizardlm-13b-v1.2",
    "llama-3.1-nemotron-70b-instruct": "nvidia/llama-3.1-nemotron-70b-instruct",
    "phi-3-mini-128k-instruct": "microsoft/phi-3-mini-128k-instruct",
}


def arena_ratings(raw_dir: Path, catalog: Catalog) -> dict[str, float]:
    """The latest LMArena rating of each model the catalog knows, by OpenRouter id."""
    history = pd.read_csv(raw_dir / RATINGS_FILE)
    latest = history.iloc[:, 1:].replace(0.0, float("nan")).ffill().iloc[-1].dropna()
    lowered = {name.lower(): target for name, target in ALIASES.items()}
    ratings = {}
    for name, rating in latest.items():
        model = ALIASES.get(name) or lowered.get(name.lower()) or ARENA_NAMES.get(name)
        if model is not None and model in catalog:
            ratings[model] = float(rating)
    return ratings
