import json
from pathlib import Path

import numpy as np

from service.tokens import estimate_tokens
from training.datasets import RAW_DIR


def test_estimate_is_zero_for_empty_and_positive_otherwise():
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("x" * 400) == 100


def test_estimate_is_within_a_quarter_of_real_provider_counts():
    """RouterArena recorded real input token counts from Anthropic and Google."""
    errors = []
    for path in sorted((Path(RAW_DIR) / "routerarena" / "cached_results").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            real = record["token_usage"]["input_tokens"]
            errors.append(abs(estimate_tokens(record["question"]) - real) / real)
    assert np.median(errors) < 0.25
