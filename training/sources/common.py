"""Shared shape of the loaders' output."""

from __future__ import annotations

import pandas as pd

COLUMNS = [
    "prompt",
    "model",
    "quality",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "response",
    "source",
    "task",
    "source_split",
]


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with exactly the loader columns, missing ones as null."""
    df = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in df:
            df[column] = None
    df = df[COLUMNS].astype(
        {
            "quality": "float64",
            "cost_usd": "float64",
            "input_tokens": "Int64",
            "output_tokens": "Int64",
        }
    )
    return df
