"""zeroeval: per-item 0/1 correctness of 43-51 late-2024 models (ZeroEval, Apache-2.0).

MATH level 5 (721 items) and CRUXEval (800 items) train the router like any other source. The
GSM8K file holds RouteLLM's GSM8K test questions, so it is loaded as its own source,
``zeroeval-gsm8k``, and only ever evaluated on. The prompt is the item's question as ZeroEval
asked it (zero-shot, its chain-of-thought template around it). ZeroEval records no tokens or
costs: the answer's length in characters / 4 stands in for its output tokens, and costs come
from the catalog (o1's hidden reasoning is not in its answers: ``UNKNOWN_COST``). A blank cell
is a model that has no result for that item, and is left out.
Columns of one model served by several hosts (``@sambanova``, ``@together``) stay separate
deployments; only names the alias table maps reach an OpenRouter id.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from service.catalog import canonical_model_id
from training.sources.common import frame

TASKS = {"math-l5": "zeroeval", "crux": "zeroeval", "gsm": "zeroeval-gsm8k"}
# o1 models bill hidden reasoning tokens that the recorded answers do not show: their costs
# here would be several times too low, so they train the router but are never routed to in
# an evaluation
UNKNOWN_COST = {"openai/o1-mini-2024-09-12", "openai/o1-preview-2024-09-12"}
CHARS_PER_TOKEN = 4
ITEM_COLUMNS = ("id", "question", "answer")


def _task(raw: Path, task: str, source: str) -> list[dict]:
    folder = raw / "zeroeval"
    correct = pd.read_csv(folder / f"zeroeval_{task}_correct.csv", dtype={"question": str})
    chars = pd.read_csv(folder / f"zeroeval_{task}_output_chars.csv")
    models = [c for c in correct.columns if c not in ITEM_COLUMNS]
    lengths = chars.set_index("id")
    rows = []
    for record in correct.to_dict("records"):
        for name in models:
            value = record[name]
            if pd.isna(value):
                continue
            length = lengths.at[record["id"], name] if name in lengths else None
            tokens = None if length is None or pd.isna(length) else round(length / CHARS_PER_TOKEN)
            rows.append(
                {
                    "prompt": record["question"],
                    "model": canonical_model_id(name),
                    "quality": float(value),
                    "output_tokens": tokens,
                    "source": source,
                    "task": task,
                    "source_split": "test" if source == "zeroeval-gsm8k" else None,
                }
            )
    return rows


def load(raw_dir: Path) -> pd.DataFrame:
    rows: list[dict] = []
    for task, source in TASKS.items():
        rows += _task(raw_dir, task, source)
    return frame(rows)
