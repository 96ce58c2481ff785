"""Build the price catalog (models/catalog.json) from the OpenRouter snapshots and the datasets.

Which price a model gets, in order:

1. Models of the routing datasets: their earliest OpenRouter snapshot, the era of the benchmark
   data (the 2024-08 list covers the RouterBench models).
2. Every other OpenRouter model: its newest snapshot.
3. Dataset models that OpenRouter never listed: the dataset's own prices (LLMRouter's NVIDIA NIM
   table, RouterArena's cost table), or for WizardLM-13B a per-token price fitted to
   RouterBench's per-call costs.
4. Otherwise no price (``null``), never 0.

Each entry also carries the model's typical answer length, the mean token count of its recorded
answers, used to estimate the cost of rows and routing decisions that lack real token counts,
and what the newest listing of it states it supports (parameters, input modalities), whichever
snapshot its price comes from.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from service.catalog import Catalog, ModelInfo, canonical_model_id, parse_openrouter_models
from service.tokens import estimate_tokens

_SNAPSHOT_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})_")
MIN_RESPONSES_FOR_OWN_LENGTH = 100


def _snapshots(raw_dir: Path) -> list[tuple[str, dict[str, ModelInfo]]]:
    """(date, models) per OpenRouter snapshot file, oldest first."""
    out = []
    for path in sorted((raw_dir / "prices").glob("*.json")):
        match = _SNAPSHOT_DATE.match(path.name)
        if match:
            seen_at = match.group(1)
            out.append((seen_at, parse_openrouter_models(json.loads(path.read_text()), seen_at)))
    return out


def _dataset_prices(raw_dir: Path) -> dict[str, tuple[float, float, str]]:
    """USD per token (prompt, completion, source) from the datasets' own price tables."""
    prices: dict[str, tuple[float, float, str]] = {}
    nim_path = raw_dir / "llmrouter" / "example_data" / "llm_candidates" / "default_llm.json"
    nim = json.loads(nim_path.read_text())
    for name, entry in nim.items():
        prices[canonical_model_id(name)] = (
            entry["input_price"] / 1e6,
            entry["output_price"] / 1e6,
            "dataset: LLMRouter NVIDIA NIM price table",
        )
    arena = json.loads((raw_dir / "routerarena" / "model_cost" / "cost.json").read_text())
    for name, entry in arena.items():
        prices.setdefault(
            canonical_model_id(name),
            (
                entry["input_token_price_per_million"] / 1e6,
                entry["output_token_price_per_million"] / 1e6,
                "dataset: RouterArena cost table",
            ),
        )
    return prices


def fitted_price(rows: pd.DataFrame) -> float | None:
    """One per-token price fitted by least squares to per-call costs (estimated token counts)."""
    rows = rows.dropna(subset=["cost_usd"])
    if rows.empty:
        return None
    tokens = rows["prompt"].map(estimate_tokens) + rows["response"].fillna("").map(estimate_tokens)
    x = tokens.to_numpy(dtype=float)
    return float(np.dot(rows["cost_usd"].to_numpy(dtype=float), x) / np.dot(x, x))


def typical_output_tokens(outcomes: pd.DataFrame) -> dict[str, int]:
    """Mean answer length per model: real counts where recorded, else estimated from the text.

    A model with fewer than MIN_RESPONSES_FOR_OWN_LENGTH recorded answers gets the mean over all.
    """
    answered = outcomes[outcomes["output_tokens"].notna() | outcomes["response"].notna()]
    lengths = (
        answered["output_tokens"]
        .astype("Float64")
        .fillna(answered["response"].fillna("").map(estimate_tokens).astype("Float64"))
    )
    overall = round(float(lengths.mean()))
    per_model = lengths.groupby(answered["model"]).agg(["mean", "count"])
    enough = per_model[per_model["count"] >= MIN_RESPONSES_FOR_OWN_LENGTH]["mean"]
    return {
        m: round(float(enough[m])) if m in enough else overall for m in outcomes["model"].unique()
    }


def _unlisted_model(model_id: str, own_prices: dict, outcomes: pd.DataFrame) -> ModelInfo:
    """A dataset model OpenRouter never listed: priced from its dataset, else unpriced."""
    if model_id in own_prices:
        prompt, completion, source = own_prices[model_id]
        return ModelInfo(model_id, model_id, prompt, completion, price_source=source)
    price = fitted_price(outcomes[outcomes["model"] == model_id])
    if price is None:
        return ModelInfo(model_id, model_id, None, None)
    source = "dataset: fitted to routerbench-subset per-call costs"
    return ModelInfo(model_id, model_id, price, price, price_source=source)


def build_catalog(raw_dir: Path, outcomes: pd.DataFrame) -> Catalog:
    """The catalog of every OpenRouter model seen plus every dataset model."""
    dataset_models = set(outcomes["model"].unique())
    models: dict[str, ModelInfo] = {}
    stated: dict[str, ModelInfo] = {}  # the newest listing of each model: what it supports
    for _, snapshot in _snapshots(raw_dir):  # oldest first; newer lists overwrite other models
        for model_id, info in snapshot.items():
            if model_id not in models or model_id not in dataset_models:
                models[model_id] = info
            if info.supported_parameters is not None or info.input_modalities is not None:
                stated[model_id] = info
    for model_id, newest in stated.items():  # capabilities now, whichever era priced it
        models[model_id] = replace(
            models[model_id],
            supported_parameters=newest.supported_parameters,
            input_modalities=newest.input_modalities,
        )
    own_prices = _dataset_prices(raw_dir)
    lengths = typical_output_tokens(outcomes)
    for model_id in sorted(dataset_models):
        listed = models.get(model_id)
        info = (
            listed if listed and listed.priced else _unlisted_model(model_id, own_prices, outcomes)
        )
        models[model_id] = replace(info, typical_output_tokens=lengths[model_id])
    return Catalog(models)
