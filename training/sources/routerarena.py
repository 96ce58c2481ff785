"""routerarena: RouterArena's cached results, 809 prompts x 2 models, real tokens and USD cost.

Scores are clipped to [0, 1]: a few METEOR scores in the source are slightly negative.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from service.catalog import canonical_model_id
from training.sources.common import frame

FILES = ["claude-3-haiku-20240307.jsonl", "gemini-2.0-flash-001.jsonl"]
_TASK = re.compile(r"^(.*?)_\d+$")


def task_of(global_index: str) -> str:
    """``MMLUPro_history_12`` -> ``MMLUPro``: the benchmark the prompt comes from."""
    match = _TASK.match(global_index)
    base = match.group(1) if match else global_index
    return base.split("_")[0]


def load(raw_dir: Path) -> pd.DataFrame:
    rows = []
    for name in FILES:
        path = raw_dir / "routerarena" / "cached_results" / name
        with path.open() as lines:
            for line in lines:
                record = json.loads(line)
                result = record["evaluation_result"]
                usage = record["token_usage"]
                rows.append(
                    {
                        "prompt": record["question"],
                        "model": canonical_model_id(record["llm_selected"]),
                        "quality": min(1.0, max(0.0, float(result["score"]))),
                        "cost_usd": float(result["inference_cost"]),
                        "input_tokens": int(usage["input_tokens"]),
                        "output_tokens": int(usage["output_tokens"]),
                        "response": record.get("generated_answer"),
                        "source": "routerarena",
                        "task": task_of(record["global_index"]),
                    }
                )
    return frame(rows)
