"""Pre-call cost bounds and budget charges.

A budget reserves the worst case before the upstream call, so the bound must not undercount,
whatever the request body carries:

- prompt tokens: byte-level BPE and SentencePiece-with-byte-fallback tokenizers never make more
  tokens than the text has UTF-8 bytes. The bound counts the bytes of the whole body as it is
  forwarded (every field, known to switchboard or not: messages, tools, response format,
  predictions, anything an upstream might read) plus a per-message allowance for the chat
  template; each image, audio or file part counts ``MEDIA_TOKENS`` instead of its bytes (and
  the model's per-image price, if it has one).
- completion tokens: the largest of the token limits the body gives that an upstream honours
  (``max_tokens``, ``max_completion_tokens``, the Responses API's ``max_output_tokens``: a body
  with several may be served under any), plus
  a reasoning budget (``reasoning.max_tokens``), times ``n`` answers. Without a limit the
  gateway sends ``budget_max_output_tokens`` as ``max_tokens`` (``bound_output``), so the bound
  holds; a body that reaches a hold without one is bounded by the model's longest answer.
- prices: the highest per-token price any tier, cache write or reasoning charge of the model's
  listing asks (``ModelInfo.worst_case_usd``), plus its per-request price.
- fields whose charges no token price bounds (``UNBOUNDED_COST_FIELDS``: OpenRouter's plugins
  such as web search, ``web_search_options``) are refused when a budget applies.

The router's own cost cap uses the expected cost instead (service.routing.decision).
"""

from __future__ import annotations

import json
from typing import Any

from service.catalog import ModelInfo
from service.config import Settings

MESSAGE_TOKENS = 16  # role markers and separators of a chat template, per message
MEDIA_TOKENS = 2_000  # an image or audio part (high-detail images cost up to about 1,600)
OUTPUT_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
UNBOUNDED_COST_FIELDS = ("plugins", "web_search_options")
TEXT_PART_TYPES = (None, "text", "input_text")


def _count(value: Any) -> int:
    """A positive integer field's value, else 0 (validation refuses the rest at the edge)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _without_media(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The body with every non-text content part left out, and how many there were."""
    media = 0
    messages = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            kept = []
            for part in content:
                if isinstance(part, dict) and part.get("type") not in TEXT_PART_TYPES:
                    media += 1
                else:
                    kept.append(part)
            message = {**message, "content": kept}
        messages.append(message)
    return {**body, "messages": messages}, media


def _prompt_bound(body: dict[str, Any]) -> tuple[int, int]:
    """(the prompt token bound, the number of media parts)."""
    text, media = _without_media(body)
    size = len(json.dumps(text, ensure_ascii=False).encode())
    return size + MESSAGE_TOKENS * (len(text["messages"]) + 1) + MEDIA_TOKENS * media, media


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens of an OpenAI chat body, counted offline."""
    return _prompt_bound(body)[0]


def answer_token_limit(body: dict[str, Any]) -> int | None:
    """The largest per-answer token limit the body gives an upstream, or None."""
    limits = [_count(body.get(name)) for name in OUTPUT_LIMIT_FIELDS]
    return max(limits) or None


def output_token_bound(
    body: dict[str, Any], settings: Settings, info: ModelInfo | None = None
) -> int:
    """An upper bound on the completion tokens the upstream may bill for this body."""
    per_answer = answer_token_limit(body)
    if per_answer is None:  # not bounded by the gateway: the model's longest answer
        longest = (info.max_output_tokens or info.context_length) if info else None
        per_answer = max(longest or 0, settings.budget_max_output_tokens)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        per_answer += _count(reasoning.get("max_tokens"))
    return per_answer * max(1, _count(body.get("n")))


def bound_output(
    body: dict[str, Any], settings: Settings, field: str = "max_tokens"
) -> dict[str, Any]:
    """The body with ``field`` (``max_output_tokens`` for the Responses API) set when it has
    no output limit of its own."""
    if answer_token_limit(body) is not None:
        return body
    return {**body, field: settings.budget_max_output_tokens}


def unbounded_cost_fields(body: dict[str, Any]) -> list[str]:
    """The fields of ``body`` that make the upstream charge beyond any token price."""
    return [name for name in UNBOUNDED_COST_FIELDS if body.get(name)]


def unpriced_fallback(settings: Settings) -> tuple[float, float] | None:
    """The prompt and completion prices budgets use for unpriced models, or None (block)."""
    if settings.unpriced_policy != "fallback":
        return None
    return settings.unpriced_prompt_usd_per_token, settings.unpriced_completion_usd_per_token


def worst_case_cost(info: ModelInfo | None, body: dict[str, Any], settings: Settings) -> float:
    """The most this call can cost; raises LookupError for an unpriced model under "block"."""
    prompt_tokens, media = _prompt_bound(body)
    output_tokens = output_token_bound(body, settings, info)
    if info is not None and info.priced:
        cost = info.worst_case_usd(prompt_tokens, output_tokens, media)
        assert cost is not None
        return cost
    fallback = unpriced_fallback(settings)
    if fallback is None:
        raise LookupError("unpriced")
    return prompt_tokens * fallback[0] + output_tokens * fallback[1]


def budget_charge(
    cost_usd: float | None, prompt_tokens: int | None, completion_tokens: int | None, s: Settings
) -> float:
    """What budgets are charged for a call: its cost, or the fallback price of its tokens."""
    if cost_usd is not None:
        return cost_usd
    fallback = unpriced_fallback(s)
    if fallback is None:
        return 0.0
    return (prompt_tokens or 0) * fallback[0] + (completion_tokens or 0) * fallback[1]
