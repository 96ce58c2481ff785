"""llmrouter: LLMRouter's 9 NVIDIA-NIM models on 14 task types, plus 500 NQ prompts x 6 models.

The main table has task scores in [0, 1] and no tokens or costs. The NQ file has answers and a
per-call cost whose unit the source does not document, so that cost is not used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from service.catalog import canonical_model_id
from training.sources.common import frame


def _tasks(raw: Path, split: str) -> dict[str, str]:
    path = raw / "example_data" / "query_data" / f"default_query_{split}.jsonl"
    tasks = {}
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            tasks[record["query"].strip()] = record["task_name"]
    return tasks


def load(raw_dir: Path) -> pd.DataFrame:
    raw = raw_dir / "llmrouter"
    rows = []
    for split in ("train", "test"):
        tasks = _tasks(raw, split)
        for record in json.loads((raw / "dcrouter_preprocessed" / f"{split}.json").read_text()):
            prompt = record["question"]
            for name, score in record["scores"].items():
                rows.append(
                    {
                        "prompt": prompt,
                        "model": canonical_model_id(name),
                        "quality": float(score),
                        "source": "llmrouter",
                        "task": tasks.get(prompt.strip(), "unknown"),
                        "source_split": split,
                    }
                )
    for record in json.loads((raw / "nq_8e724d6" / "router_train_data_nq.json").read_text()):
        for name, response, perf in zip(
            record["llm_name_list"], record["response_list"], record["perf_list"], strict=True
        ):
            rows.append(
                {
                    "prompt": record["query"],
                    "model": canonical_model_id(name),
                    "quality": float(perf),
                    "response": response,
                    "source": "llmrouter",
                    "task": "natural_qa",
                }
            )
    return frame(rows)
