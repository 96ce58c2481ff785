"""Read an outcomes file (JSONL, CSV or Parquet) from anywhere, with errors that name the row.

Required columns: ``prompt``, ``model``, ``quality`` (a number in [0, 1]). Optional:
``prompt_id`` (derived from the prompt when absent), ``cost_usd``, ``input_tokens``,
``output_tokens``, ``source``, ``task``, ``split``. Rows are numbered from 1 in the order of the
file (for CSV and JSONL, row N is the N-th record after the header).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from service.catalog import Catalog, canonical_model_id
from training.prompts import prompt_id

REQUIRED = ["prompt", "model", "quality"]
NUMERIC = ["quality", "cost_usd", "input_tokens", "output_tokens"]
OPTIONAL_TEXT = ["prompt_id", "source", "task", "split"]


class OutcomesError(ValueError):
    """An outcomes file that cannot be used; the message names the file, row and column."""


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            records = []
            with path.open() as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise OutcomesError(
                            f"{path}: row {number}: not valid JSON ({error.msg})"
                        ) from None
                    if not isinstance(record, dict):
                        raise OutcomesError(f"{path}: row {number}: expected a JSON object")
                    records.append(record)
            return pd.DataFrame.from_records(records)
        if suffix == ".csv":
            return pd.read_csv(path, dtype={"prompt": str, "model": str}, keep_default_na=True)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except OutcomesError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise OutcomesError(f"{path}: cannot be read as {suffix[1:]}: {error}") from error
    raise OutcomesError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip()
        if text == "":
            return None
        number = float(text)
    return None if math.isnan(number) else number


def load_aliases(path: Path | None) -> dict[str, str]:
    """A user's alias file (``SWITCHBOARD_ALIASES_PATH``): a JSON object of model names to
    OpenRouter ids, used beside the built-in table."""
    if path is None:
        return {}
    try:
        aliases = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise OutcomesError(f"{path}: cannot be read as a JSON alias file: {error}") from None
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise OutcomesError(f'{path}: expected a JSON object {{"your name": "vendor/model"}}')
    return aliases


def check_models(table: pd.DataFrame, catalog: Catalog, path: Path | str) -> None:
    """OutcomesError naming the file's models that map to no catalog id, and how to fix it."""
    unknown = sorted(m for m in table["model"].unique() if m not in catalog)
    if unknown:
        raise OutcomesError(
            f"{path}: {len(unknown)} model(s) with no catalog entry and no alias: "
            f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}. Name models by "
            "their OpenRouter id (GET /v1/models lists them), or map your names to them in a "
            'JSON alias file {"your name": "vendor/model"} named by SWITCHBOARD_ALIASES_PATH'
        )


def read_outcomes(path: Path | str, aliases: dict[str, str] | None = None) -> pd.DataFrame:
    """The validated outcomes of ``path``, one row per record, models as OpenRouter ids (through
    ``aliases``, then the built-in alias table)."""
    aliases = aliases or {}
    path = Path(path)
    if not path.exists():
        raise OutcomesError(f"{path}: no such file")
    frame = _read(path)
    if frame.empty:
        raise OutcomesError(f"{path}: has no rows")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise OutcomesError(f"{path}: missing required column(s): {', '.join(missing)}")
    frame = frame.reset_index(drop=True)
    rows: dict[str, list] = {c: [] for c in REQUIRED + NUMERIC[1:] + OPTIONAL_TEXT}
    for index, record in enumerate(frame.to_dict("records"), start=1):
        where = f"{path}: row {index}"
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise OutcomesError(f"{where}, column 'prompt': empty or not text")
        model = record.get("model")
        if not isinstance(model, str) or not model.strip():
            raise OutcomesError(f"{where}, column 'model': empty or not text")
        numbers = {}
        for column in NUMERIC:
            try:
                numbers[column] = _number(record.get(column))
            except (TypeError, ValueError):
                raise OutcomesError(
                    f"{where}, column {column!r}: {record.get(column)!r} is not a number"
                ) from None
        quality = numbers["quality"]
        if quality is None or not 0.0 <= quality <= 1.0:
            raise OutcomesError(f"{where}, column 'quality': {quality!r} is not in [0, 1]")
        for column in ("cost_usd", "input_tokens", "output_tokens"):
            value = numbers[column]
            if value is not None and value < 0:
                raise OutcomesError(f"{where}, column {column!r}: {value!r} is negative")
        rows["prompt"].append(prompt)
        name = model.strip()
        rows["model"].append(canonical_model_id(aliases.get(name, name)))
        for column in NUMERIC:
            rows[column].append(numbers[column])
        given_id = record.get("prompt_id")
        rows["prompt_id"].append(str(given_id) if given_id not in (None, "") else prompt_id(prompt))
        for column in ("source", "task", "split"):
            value = record.get(column)
            rows[column].append(None if value is None or value != value else str(value))
    out = pd.DataFrame(rows)
    return out.astype({"input_tokens": "Float64", "output_tokens": "Float64"})
