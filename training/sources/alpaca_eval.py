"""alpaca-eval: AlpacaEval 1 judge preferences on 805 chat instructions (CC BY-NC 4.0).

Evaluation only: the data's license is non-commercial, so these rows never enter the outcomes
table the routers train on; they are written to their own table (``datasets/alpaca_eval.parquet``)
and only ever evaluated on. One row per (instruction, model) for the models with an OpenRouter
price: quality is the GPT-4 judge's preference of the model's answer over text-davinci-003's
reference answer (1 better, 0 worse, 0.5 a draw or identical answers; failed judgments are left
out). Tokens are estimated from the texts (characters / 4) and priced from the catalog.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from service.tokens import estimate_tokens
from training.sources.common import frame

SOURCE = "alpaca-eval"
LICENSE = "CC BY-NC 4.0 (tatsu-lab/alpaca_eval data): evaluation only, never trained on"
# AlpacaEval 1 generator -> the OpenRouter id serving that same model
MODELS = {
    "gpt4_1106_preview": "openai/gpt-4-1106-preview",
    "gpt4": "openai/gpt-4",  # gpt-4-0613, what openai/gpt-4 serves
    "gpt4_0314": "openai/gpt-4-0314",
    "gpt-3.5-turbo-0301": "openai/gpt-3.5-turbo-0301",
    "gpt-3.5-turbo-1106": "openai/gpt-3.5-turbo-1106",
    "gpt35_turbo_instruct": "openai/gpt-3.5-turbo-instruct",
    "claude": "anthropic/claude-1",
    "claude-2": "anthropic/claude-2",
    "Yi-34B-Chat": "01-ai/yi-34b-chat",
    "llama-2-70b-chat-hf": "meta-llama/llama-2-70b-chat",
    "llama-2-13b-chat-hf": "meta-llama/llama-2-13b-chat",
    "mistral-medium": "mistralai/mistral-medium",
}
# preference 2: the model's answer is better; 1: the reference's; 1.5 (legacy 0): a draw
QUALITY = {2.0: 1.0, 1.0: 0.0, 1.5: 0.5, 0.0: 0.5}


def annotations_path(raw_dir: Path, generator: str) -> Path:
    return raw_dir / "alpaca-eval" / "results" / generator / "alpaca_eval_gpt4" / "annotations.json"


def load(raw_dir: Path) -> pd.DataFrame:
    rows = []
    for generator, model in MODELS.items():
        for record in json.loads(annotations_path(raw_dir, generator).read_text()):
            preference = record.get("preference")
            if preference is None or float(preference) not in QUALITY:
                continue
            rows.append(
                {
                    "prompt": record["instruction"],
                    "model": model,
                    "quality": QUALITY[float(preference)],
                    "input_tokens": estimate_tokens(record["instruction"]),
                    "output_tokens": estimate_tokens(record["output_2"] or ""),
                    "source": SOURCE,
                    "task": record["dataset"],
                    "source_split": "test",
                }
            )
    return frame(rows)
