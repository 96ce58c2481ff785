"""Prompt identity: normalization for cross-source dedupe, stable ids, and question keys.

Two prompts are the same prompt when their normalized texts are equal. A question key (the
question sentence without few-shot examples or answer options) finds the same benchmark
question formatted differently by another source, so that no evaluation question leaks into
training through a second copy.
"""

from __future__ import annotations

import re

from service.prompts import normalize, prompt_id

_OPTION_LINE = re.compile(r"\n\s*\(?[Aa][\).:]\s")
MIN_KEY_WORDS = 5

__all__ = ["MIN_KEY_WORDS", "last_block", "normalize", "prompt_id", "question_key"]


def last_block(text: str) -> str:
    """The last paragraph of a prompt: the question itself in a few-shot prompt."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    return blocks[-1] if blocks else ""


def question_key(text: str) -> str | None:
    """The normalized question of a prompt: its last paragraph, cut before answer options.

    Returns None when the question is too short to identify a prompt on its own.
    """
    last = last_block(text)
    match = _OPTION_LINE.search(last)
    stem = normalize(last[: match.start()] if match else last)
    return stem if len(stem.split()) >= MIN_KEY_WORDS else None
