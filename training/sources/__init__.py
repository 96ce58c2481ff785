"""Loaders of the raw benchmark files in datasets/raw/, one module per source.

Every loader returns rows of the routing-outcomes table before dedupe and split: ``prompt``,
``model`` (OpenRouter id), ``quality`` in [0, 1], ``cost_usd``, ``input_tokens``,
``output_tokens``, ``response``, ``source``, ``task`` and ``source_split`` (the split the source
ships, or None).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from training.sources import llmrouter, routellm, routerarena, routerbench, zeroeval
from training.sources.common import COLUMNS, frame

__all__ = ["COLUMNS", "EVALUATION_ONLY", "LICENSES", "LOADERS", "frame"]

LOADERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "routerbench-subset": routerbench.load,
    "llmrouter": llmrouter.load,
    "routerarena": routerarena.load,
    "routellm": routellm.load,
    "zeroeval": zeroeval.load,
}
LICENSES = {
    "routerbench-subset": "MIT (RouterBench data, withmartian/routerbench)",
    "llmrouter": "MIT (ulab-uiuc/LLMRouter)",
    "routerarena": "Apache-2.0 (RouteWorks/RouterArena)",
    "routellm": "Apache-2.0 (lm-sys/RouteLLM); evaluation only",
    "zeroeval": "Apache-2.0 (WildEval/ZeroEval)",
    "zeroeval-gsm8k": "Apache-2.0 (WildEval/ZeroEval); RouteLLM's GSM8K test set: evaluation only",
}
EVALUATION_ONLY = {"routellm", "zeroeval-gsm8k"}
