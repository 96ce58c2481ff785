"""The model catalog: OpenRouter ids, prices, and the alias table from dataset model names.

Prices are USD per token (as OpenRouter reports them). A missing price is ``None``, never 0:
an unpriced model cannot be routed on cost, and silently pricing it at 0 would hide spend.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from service.config import REPO_ROOT

DEFAULT_CATALOG_PATH = REPO_ROOT / "models" / "catalog.json"

# Dataset model names -> OpenRouter ids. The one place where names from benchmark files become
# the ids the service routes to. The routerbench-subset ids are fixed by outside evaluation files.
ALIASES: dict[str, str] = {
    # routerbench-subset (RouterBench 0-shot)
    "gpt-4-1106-preview": "openai/gpt-4-1106-preview",
    "gpt-3.5-turbo-1106": "openai/gpt-3.5-turbo-1106",
    "claude-v1": "anthropic/claude-1",
    "claude-v2": "anthropic/claude-2",
    "claude-instant-v1": "anthropic/claude-instant-1",
    "mistralai/mixtral-8x7b-chat": "mistralai/mixtral-8x7b-instruct",
    "mistralai/mistral-7b-chat": "mistralai/mistral-7b-instruct-v0.1",
    "meta/llama-2-70b-chat": "meta-llama/llama-2-70b-chat",
    "meta/code-llama-instruct-34b-chat": "meta-llama/codellama-34b-instruct",
    "zero-one-ai/Yi-34B-Chat": "01-ai/yi-34b-chat",
    "WizardLM/WizardLM-13B-V1.2": "wizardlm/wizardlm-13b-v1.2",
    # RouteLLM benchmarks
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-instruct",
    # LLMRouter (NVIDIA NIM names, and the NIM ids of its NQ file)
    "qwen2.5-7b-instruct": "qwen/qwen-2.5-7b-instruct",
    "qwen/qwen2.5-7b-instruct": "qwen/qwen-2.5-7b-instruct",
    "llama-3.1-8b-instruct": "meta-llama/llama-3.1-8b-instruct",
    "meta/llama-3.1-8b-instruct": "meta-llama/llama-3.1-8b-instruct",
    "meta/llama-3.1-70b-instruct": "meta-llama/llama-3.1-70b-instruct",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "google/gemma-2-27b-it": "google/gemma-2-27b-it",
    "mistral-7b-instruct-v0.3": "mistralai/mistral-7b-instruct-v0.3",
    "mistralai/mistral-7b-instruct-v0.3": "mistralai/mistral-7b-instruct-v0.3",
    "mistralai/mixtral-8x22b-instruct-v0.1": "mistralai/mixtral-8x22b-instruct",
    "codegemma-7b": "google/codegemma-7b",
    "llama3-chatqa-1.5-8b": "nvidia/llama3-chatqa-1.5-8b",
    "llama3-chatqa-1.5-70b": "nvidia/llama3-chatqa-1.5-70b",
    "llama-3.1-nemotron-51b-instruct": "nvidia/llama-3.1-nemotron-51b-instruct",
    "llama-3.3-nemotron-super-49b-v1": "nvidia/llama-3.3-nemotron-super-49b-v1",
    # RouterArena
    "claude-3-haiku-20240307": "anthropic/claude-3-haiku",
    "gemini-2.0-flash-001": "google/gemini-2.0-flash-001",
    # ZeroEval (late 2024). Only ids that served exactly this model: a dated id, or an undated
    # one that never moved on to a newer model (openai/gpt-4-turbo is 2024-04-09 still). Left
    # out on purpose: chatgpt-4o-latest (moves), deepseek-v2.5 (deepseek/deepseek-chat is V3),
    # the Gemini "exp" previews, host-specific deployments ("@sambanova") and models OpenRouter
    # never listed; they keep their ZeroEval names, train the router, and are never served.
    "gpt-4o-2024-05-13": "openai/gpt-4o-2024-05-13",
    "gpt-4o-2024-08-06": "openai/gpt-4o-2024-08-06",
    "gpt-4o-mini-2024-07-18": "openai/gpt-4o-mini",
    "gpt-4-turbo-2024-04-09": "openai/gpt-4-turbo",
    "gpt-4-0314": "openai/gpt-4-0314",
    "gpt-3.5-turbo-0125": "openai/gpt-3.5-turbo-0125",
    "o1-mini-2024-09-12": "openai/o1-mini-2024-09-12",
    "o1-preview-2024-09-12": "openai/o1-preview-2024-09-12",
    "claude-3-5-sonnet-20240620": "anthropic/claude-3.5-sonnet-20240620",
    "claude-3-5-sonnet-20241022": "anthropic/claude-3.5-sonnet",
    "claude-3-5-haiku-20241022": "anthropic/claude-3.5-haiku-20241022",
    "claude-3-opus-20240229": "anthropic/claude-3-opus",
    "claude-3-sonnet-20240229": "anthropic/claude-3-sonnet",
    "gemma-2-27b-it": "google/gemma-2-27b-it",
    "Meta-Llama-3-70B-Instruct": "meta-llama/llama-3-70b-instruct",
    "Meta-Llama-3-8B-Instruct": "meta-llama/llama-3-8b-instruct",
    "Meta-Llama-3.1-70B-Instruct": "meta-llama/llama-3.1-70b-instruct",
    "Meta-Llama-3.1-8B-Instruct": "meta-llama/llama-3.1-8b-instruct",
    "Mistral-Large-2": "mistralai/mistral-large-2407",
    "Mistral-Nemo-Instruct-2407": "mistralai/mistral-nemo",
    "Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-instruct",
    "Qwen2.5-72B-Instruct": "qwen/qwen-2.5-72b-instruct",
    "Qwen2.5-7B-Instruct": "qwen/qwen-2.5-7b-instruct",
    "Qwen2-72B-Instruct": "qwen/qwen-2-72b-instruct",
    "Qwen2-7B-Instruct": "qwen/qwen-2-7b-instruct",
    "Phi-3.5-mini-instruct": "microsoft/phi-3.5-mini-128k-instruct",
    "yi-large": "01-ai/yi-large",
    "grok-2-1212": "x-ai/grok-2-1212",
    "command-r-plus": "cohere/command-r-plus-04-2024",
    "command-r": "cohere/command-r-03-2024",
}


class UnknownModelError(KeyError):
    """A model id that is neither a catalog id nor a known alias."""

    def __str__(self) -> str:
        return f"unknown model id {self.args[0]!r}: not in the catalog or its alias table"


def canonical_model_id(name: str) -> str:
    """Map a dataset model name (or an OpenRouter id) to its OpenRouter id."""
    return ALIASES.get(name, name)


@dataclass(frozen=True)
class ModelInfo:
    """One catalog entry. Prices in USD per token; ``None`` when unknown."""

    id: str
    name: str
    prompt_usd_per_token: float | None
    completion_usd_per_token: float | None
    request_usd: float = 0.0
    price_source: str = ""
    price_seen_at: str | None = None
    context_length: int | None = None
    typical_output_tokens: int | None = None
    cached_prompt_usd_per_token: float | None = None  # cache reads; None: the prompt price
    # the most any price tier, cache write or reasoning charge of the listing asks per token
    # (what a budget's worst case counts); None: the prompt and completion prices
    peak_prompt_usd_per_token: float | None = None
    peak_completion_usd_per_token: float | None = None
    max_output_tokens: int | None = None  # the longest answer the upstream serves
    image_usd: float = 0.0  # per input image, on top of its tokens
    # what the listing states the model supports (service.capabilities); None: not stated
    supported_parameters: tuple[str, ...] | None = None
    input_modalities: tuple[str, ...] | None = None

    def worst_case_usd(
        self, input_tokens: float, output_tokens: float, media_parts: int = 0
    ) -> float | None:
        """The most a call with these token counts (and image or audio parts) can be charged,
        every price tier at its peak."""
        if not self.priced:
            return None
        assert self.prompt_usd_per_token is not None and self.completion_usd_per_token is not None
        prompt = max(self.prompt_usd_per_token, self.peak_prompt_usd_per_token or 0.0)
        completion = max(self.completion_usd_per_token, self.peak_completion_usd_per_token or 0.0)
        media = media_parts * self.image_usd
        return input_tokens * prompt + output_tokens * completion + self.request_usd + media

    @property
    def priced(self) -> bool:
        return self.prompt_usd_per_token is not None and self.completion_usd_per_token is not None

    def cost_usd(
        self, input_tokens: float, output_tokens: float, cached_tokens: float = 0
    ) -> float | None:
        """Price one call; ``None`` when the model has no price.

        ``cached_tokens`` of the input were read from the provider's prompt cache and cost the
        cache-read price where the model has one.
        """
        if not self.priced:
            return None
        assert self.prompt_usd_per_token is not None and self.completion_usd_per_token is not None
        cached = min(cached_tokens, input_tokens)
        cache_price = self.cached_prompt_usd_per_token
        if cache_price is None:
            cache_price = self.prompt_usd_per_token
        return (
            (input_tokens - cached) * self.prompt_usd_per_token
            + cached * cache_price
            + output_tokens * self.completion_usd_per_token
            + self.request_usd
        )


def _price(value: Any) -> float | None:
    """OpenRouter prices are decimal strings; negative means dynamic (not a fixed price)."""
    if value is None or value == "":
        return None
    price = float(value)
    return None if price < 0 else price


def _peak(pricing: dict[str, Any], names: tuple[str, ...]) -> float | None:
    """The highest of these per-token prices, over the base tier and every override tier."""
    tiers = [pricing, *[t for t in pricing.get("overrides") or [] if isinstance(t, dict)]]
    found = [p for tier in tiers for name in names if (p := _price(tier.get(name))) is not None]
    return max(found) if found else None


def _names(value: Any) -> tuple[str, ...] | None:
    return tuple(sorted(str(v) for v in value)) if isinstance(value, list) else None


PEAK_PROMPT = ("prompt", "input_cache_write", "input_cache_write_1h")
PEAK_COMPLETION = ("completion", "internal_reasoning")


def parse_openrouter_models(payload: dict[str, Any], seen_at: str) -> dict[str, ModelInfo]:
    """Parse an OpenRouter ``/api/v1/models`` response into catalog entries (variants skipped).

    Variants such as ``:free`` or ``:beta`` are separate listings of the same model with other
    terms; the catalog keeps the base listing only.
    """
    models: dict[str, ModelInfo] = {}
    for item in payload.get("data", []):
        model_id = item.get("id", "")
        if not model_id or ":" in model_id or model_id.startswith("~"):
            continue
        pricing = item.get("pricing") or {}
        models[model_id] = ModelInfo(
            id=model_id,
            name=item.get("name") or model_id,
            prompt_usd_per_token=_price(pricing.get("prompt")),
            completion_usd_per_token=_price(pricing.get("completion")),
            request_usd=_price(pricing.get("request")) or 0.0,
            cached_prompt_usd_per_token=_price(pricing.get("input_cache_read")),
            peak_prompt_usd_per_token=_peak(pricing, PEAK_PROMPT),
            peak_completion_usd_per_token=_peak(pricing, PEAK_COMPLETION),
            max_output_tokens=(item.get("top_provider") or {}).get("max_completion_tokens"),
            image_usd=_peak(pricing, ("image",)) or 0.0,
            supported_parameters=_names(item.get("supported_parameters")),
            input_modalities=_names((item.get("architecture") or {}).get("input_modalities")),
            price_source=f"openrouter /api/v1/models {seen_at}",
            price_seen_at=seen_at,
            context_length=item.get("context_length"),
        )
    return models


def _stated(fresh: ModelInfo, old: ModelInfo, field: str) -> tuple[str, ...] | None:
    """What the fresh listing states, or what was known when it states nothing."""
    stated = getattr(fresh, field)
    return stated if stated is not None else getattr(old, field)


class Catalog:
    """Models by OpenRouter id, loaded from the JSON file that ``switchboard data build`` writes."""

    def __init__(self, models: dict[str, ModelInfo]):
        self.models = models
        known = sorted(m.typical_output_tokens for m in models.values() if m.typical_output_tokens)
        # what a model with no recorded answers is expected to answer at: the median of those
        # with (never 0: a model without a length must not look free)
        self.median_output_tokens = known[len(known) // 2] if known else 300

    def __contains__(self, model_id: str) -> bool:
        return canonical_model_id(model_id) in self.models

    def get(self, model_id: str) -> ModelInfo:
        key = canonical_model_id(model_id)
        if key not in self.models:
            raise UnknownModelError(model_id)
        return self.models[key]

    def ids(self) -> list[str]:
        return sorted(self.models)

    def merge(self, listed: dict[str, ModelInfo]) -> dict[str, list[str]]:
        """Take prices, context lengths and what each model supports (parameters, input
        modalities) from a fresh listing (``switchboard models sync``).

        Listed models get the listing's prices and seen-at time (keeping what the catalog knows
        that a listing does not: typical answer lengths, prices of models it leaves unpriced);
        new models are added; unlisted ones are kept as they were.
        """
        report: dict[str, list[str]] = {"added": [], "repriced": [], "seen": []}
        for model_id, fresh in listed.items():
            old = self.models.get(model_id)
            if old is None:
                self.models[model_id] = fresh
                report["added"].append(model_id)
                continue
            if not fresh.priced and old.priced:
                continue
            prices = (
                *("prompt_usd_per_token", "completion_usd_per_token", "request_usd"),
                *("peak_prompt_usd_per_token", "peak_completion_usd_per_token"),
            )
            if any(getattr(old, p) != getattr(fresh, p) for p in prices):
                report["repriced"].append(model_id)
            else:
                report["seen"].append(model_id)
            self.models[model_id] = replace(
                fresh,
                typical_output_tokens=old.typical_output_tokens,
                context_length=fresh.context_length or old.context_length,
                supported_parameters=_stated(fresh, old, "supported_parameters"),
                input_modalities=_stated(fresh, old, "input_modalities"),
            )
        return report

    @classmethod
    def load(cls, path: Path = DEFAULT_CATALOG_PATH) -> Catalog:
        payload = json.loads(Path(path).read_text())
        models = {}
        for entry in payload["models"]:
            for name in ("supported_parameters", "input_modalities"):
                if entry.get(name) is not None:
                    entry[name] = tuple(entry[name])
            models[entry["id"]] = ModelInfo(**entry)
        return cls(models)

    def save(self, path: Path) -> None:
        payload = {"models": [asdict(self.models[k]) for k in self.ids()]}
        Path(path).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
