"""Pre-call cost bounds and budget charges.

A budget reserves the worst case before the upstream call, so the bound must not undercount:

- prompt tokens: byte-level BPE and SentencePiece-with-byte-fallback tokenizers never make more
  tokens than the text has UTF-8 bytes, so the bytes of every text part (message contents, tool
  calls, tool definitions, response format) plus a per-message allowance for the chat template
  bound the count; each image or audio part counts ``MEDIA_TOKENS``.
- completion tokens: the request's ``max_completion_tokens`` or ``max_tokens``, else
  ``budget_max_output_tokens``, which the gateway then sends as ``max_tokens`` so that the bound
  holds.

The router's own cost cap uses the expected cost instead (service.routing.decision).
"""

from __future__ import annotations

import json
from typing import Any

from service.catalog import ModelInfo
from service.config import Settings

MESSAGE_TOKENS = 16  # role markers and separators of a chat template, per message
MEDIA_TOKENS = 2_000  # an image or audio part (high-detail images cost up to about 1,600)


def _bytes(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    return len(json.dumps(value, ensure_ascii=False).encode())


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens of an OpenAI chat body, counted offline."""
    total = MESSAGE_TOKENS + _bytes(body.get("tools")) + _bytes(body.get("response_format"))
    for message in body.get("messages") or []:
        total += MESSAGE_TOKENS + _bytes(message.get("name")) + _bytes(message.get("tool_calls"))
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in (None, "text"):
                    total += _bytes(part.get("text"))
                else:
                    total += MEDIA_TOKENS
        else:
            total += _bytes(content)
    return total


def output_token_bound(body: dict[str, Any], settings: Settings) -> int:
    return int(
        body.get("max_completion_tokens")
        or body.get("max_tokens")
        or settings.budget_max_output_tokens
    )


def bound_output(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The body with ``max_tokens`` set when it has no output limit of its own."""
    if body.get("max_completion_tokens") or body.get("max_tokens"):
        return body
    return {**body, "max_tokens": settings.budget_max_output_tokens}


def unpriced_fallback(settings: Settings) -> tuple[float, float] | None:
    """The prompt and completion prices budgets use for unpriced models, or None (block)."""
    if settings.unpriced_policy != "fallback":
        return None
    return settings.unpriced_prompt_usd_per_token, settings.unpriced_completion_usd_per_token


def worst_case_cost(info: ModelInfo | None, body: dict[str, Any], settings: Settings) -> float:
    """The most this call can cost; raises LookupError for an unpriced model under "block"."""
    prompt_tokens, output_tokens = prompt_token_bound(body), output_token_bound(body, settings)
    if info is not None and info.priced:
        cost = info.cost_usd(prompt_tokens, output_tokens)
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
