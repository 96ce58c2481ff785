"""routerbench-subset: RouterBench 0-shot rows (ARC-Challenge, MBPP, Winogrande), 11 models.

Correctness is 0/1 per model, with the real per-call USD cost RouterBench recorded. The
``*_test.csv`` files are the source's own test split and stay in test.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pandas as pd

from service.catalog import canonical_model_id
from training.sources.common import frame

MODELS = [
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
]
TASKS = {"arc_challenge": "arc-challenge", "mbpp": "mbpp", "winograde": "winogrande"}


def messages(cell: object) -> str:
    """The source stores prompts and answers as Python list literals of strings."""
    if not isinstance(cell, str):
        return ""
    try:
        parts = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return cell
    if isinstance(parts, list):
        return "\n\n".join(str(p) for p in parts)
    return str(parts)


def load(raw_dir: Path) -> pd.DataFrame:
    rows = []
    for stem, task in TASKS.items():
        for split in ("train", "test"):
            table = pd.read_csv(raw_dir / "routerbench-subset" / f"{stem}_{split}.csv")
            for record in table.to_dict("records"):
                prompt = messages(record["prompt"])
                for name in MODELS:
                    quality = record[name]
                    if quality is None or (isinstance(quality, float) and math.isnan(quality)):
                        continue  # the source has no outcome for this (prompt, model)
                    cost = record[f"{name}|total_cost"]
                    rows.append(
                        {
                            "prompt": prompt,
                            "model": canonical_model_id(name),
                            "quality": float(quality),
                            "cost_usd": None if pd.isna(cost) else float(cost),
                            "response": messages(record.get(f"{name}|model_response")),
                            "source": "routerbench-subset",
                            "task": task,
                            "source_split": split,
                        }
                    )
    return frame(rows)
