"""What a request needs of a model, and whether a catalog model offers it.

A request's needs come from its body: tools and ``tool_choice``, a ``response_format``
(``json_object``; ``json_schema``, which OpenRouter calls structured outputs), image, audio or
file content parts, a context long enough for its messages and ``max_tokens``, and every
sampling field it sets. A model offers what OpenRouter's listing states for it
(``supported_parameters``, ``architecture.input_modalities``, ``context_length``, kept in the
catalog and refreshed by ``switchboard models sync``). Where no listing stated what a model
supports, tools, response formats and media parts are not assumed (``STATED_ONLY``); sampling
fields are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.catalog import ModelInfo
from service.costs import answer_token_limit
from service.tokens import estimate_tokens

# request fields that a model's listing must support when a request sets them
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_p",
    "top_a",
    "seed",
    "stop",
    "logit_bias",
    "logprobs",
    "top_logprobs",
)
MEDIA = {"image_url": "image", "input_image": "image", "input_audio": "audio", "file": "file"}
# what a model must be stated to support: a tool call or a schema sent to a model that ignores
# it is a wrong answer, where an unsupported sampling field is at worst ignored
STATED_ONLY = frozenset({"tools", "tool_choice", "structured_outputs", "response_format"})


@dataclass(frozen=True)
class Needs:
    """What one request needs of the model that answers it."""

    parameters: frozenset[str]  # OpenRouter parameter names (tools, response_format, ...)
    modalities: frozenset[str]  # input modalities besides text
    context_tokens: int  # its messages' tokens (estimated) and its answer's limit

    def describe(self) -> str:
        parts = sorted(self.parameters) + [f"{m} input" for m in sorted(self.modalities)]
        return ", ".join(parts) or "text"


def needs(body: dict[str, Any], prompt: str) -> Needs:
    """The needs of an OpenAI chat body (``prompt``: its text, for the context estimate)."""
    parameters = {name for name in SAMPLING_FIELDS if body.get(name) is not None}
    if body.get("tools"):
        parameters.add("tools")
    if body.get("tool_choice") not in (None, "none", "auto"):
        parameters.add("tool_choice")
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            parameters.add("structured_outputs")
        elif kind == "json_object":
            parameters.add("response_format")
    modalities = set()
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") in MEDIA:
                modalities.add(MEDIA[part["type"]])
    context = estimate_tokens(prompt) + (answer_token_limit(body) or 0)
    return Needs(frozenset(parameters), frozenset(modalities), context)


def unmet(info: ModelInfo, need: Needs) -> str | None:
    """Why ``info`` cannot serve a request with ``need``, or None."""
    supported = info.supported_parameters
    if supported is None:
        unstated = sorted(need.parameters & STATED_ONLY)
        if unstated:
            return f"does not support {', '.join(unstated)} (its listing states no support)"
    else:
        missing = sorted(p for p in need.parameters if p not in supported)
        if "structured_outputs" in missing and "response_format" in supported:
            missing.remove("structured_outputs")  # a json_schema through response_format
        if missing:
            return f"does not support {', '.join(missing)}"
    modalities = info.input_modalities or ("text",)
    lacking = sorted(m for m in need.modalities if m not in modalities)
    if lacking:
        return f"takes no {', '.join(lacking)} input"
    if info.context_length and need.context_tokens > info.context_length:
        return (
            f"its context ({info.context_length:,} tokens) is shorter than the request's "
            f"{need.context_tokens:,}"
        )
    return None


def routing_hint(body: dict[str, Any]) -> str:
    """A line describing the request's tools and answer format, embedded with its prompt, so
    that the router sees a tool call or a structured answer as the task it is."""
    hints = []
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        names = [
            str((t.get("function") or {}).get("name", ""))
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        hints.append("call one of the tools " + ", ".join(n for n in names if n))
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        hints.append("answer in JSON")
    return ("\n\n[" + "; ".join(hints) + "]") if hints else ""
