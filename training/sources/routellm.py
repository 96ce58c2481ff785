"""routellm: the RouteLLM paper's benchmarks (MMLU, GSM8K, MT-Bench), GPT-4-1106 vs Mixtral-8x7B.

Evaluation only: never trained on. The prompts RouteLLM lists as contaminated are dropped, as the
paper does, which leaves 14,037 MMLU, 1,307 GSM8K and 72 MT-Bench questions. MT-Bench routes on
the first turn; its quality is the mean GPT-4 judge score of both turns divided by 10.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd

from service.catalog import canonical_model_id
from training.sources.common import frame

MODELS = ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]


def _contaminated(path: Path) -> set[str]:
    with path.open() as lines:
        return {json.loads(line)["eval_prompt"] for line in lines}


def _truth(value: object) -> float:
    if isinstance(value, str):
        return 1.0 if value.strip().lower() == "true" else 0.0
    return float(bool(value))


def _mmlu(raw: Path) -> list[dict]:
    skip = _contaminated(raw / "mmlu" / "contaminated_prompts.jsonl")
    rows = []
    for path in sorted((raw / "mmlu" / "responses").glob("mmlu_*.csv")):
        for record in pd.read_csv(path).to_dict("records"):
            if record["prompt"] in skip:
                continue
            for name in MODELS:
                rows.append(
                    {"prompt": record["prompt"], "model": name, "quality": _truth(record[name])}
                )
    for row in rows:
        row["task"] = "mmlu"
    return rows


def _gsm8k(raw: Path) -> list[dict]:
    skip = _contaminated(raw / "gsm8k" / "contaminated_prompts.jsonl")
    rows = []
    for record in pd.read_csv(raw / "gsm8k" / "gsm8k_responses.csv").to_dict("records"):
        if record["prompt"] in skip:
            continue
        for name in MODELS:
            rows.append(
                {
                    "prompt": record["prompt"],
                    "model": name,
                    "quality": _truth(record[name]),
                    "response": record[f"{name}_response"],
                    "task": "gsm8k",
                }
            )
    return rows


def _mt_bench(raw: Path) -> list[dict]:
    skip = _contaminated(raw / "mt_bench" / "contaminated_prompts.jsonl")
    first_turn = {}
    with (raw / "mt_bench" / "question.jsonl").open() as lines:
        for line in lines:
            record = json.loads(line)
            first_turn[record["question_id"]] = record["turns"][0]
    scores: dict[tuple[int, str], list[float]] = defaultdict(list)
    with (raw / "mt_bench" / "judgements.jsonl").open() as lines:
        for line in lines:
            record = json.loads(line)
            scores[(record["question_id"], record["model"])].append(float(record["score"]))
    rows = []
    for (question_id, name), values in sorted(scores.items()):
        prompt = first_turn[question_id]
        if prompt in skip:
            continue
        rows.append(
            {
                "prompt": prompt,
                "model": name,
                "quality": sum(values) / len(values) / 10.0,
                "task": "mt-bench",
            }
        )
    return rows


def load(raw_dir: Path) -> pd.DataFrame:
    raw = raw_dir / "routellm"
    rows = _mmlu(raw) + _gsm8k(raw) + _mt_bench(raw)
    for row in rows:
        row["model"] = canonical_model_id(row["model"])
        row["source"] = "routellm"
        row["source_split"] = "test"
    return frame(rows)
