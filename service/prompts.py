"""Prompt text and identity: what the router reads from a chat request, and stable prompt ids.

Two prompts are the same prompt when their normalized texts are equal (lowercase, NFKC,
straight quotes, single spaces); the id is the first 16 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "\u00a0": " "})
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, NFKC, straight quotes, single spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    return _SPACE.sub(" ", text).strip()


def prompt_id(text: str) -> str:
    """A stable 16-hex-digit id of the normalized prompt."""
    return hashlib.sha256(normalize(text).encode()).hexdigest()[:16]


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text") or ""))
        return "\n".join(parts)
    return str(content)


def prompt_text(messages: Sequence[dict[str, Any]]) -> str:
    """Everything the model will read, in order: the text the router scores."""
    return "\n\n".join(t for m in messages if (t := content_text(m.get("content"))))


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""
