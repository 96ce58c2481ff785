"""The embedded default upstream: answers from the real recorded responses in the shipped data.

For a prompt the benchmarks recorded, each model that answered it can "answer" again: the same
text, with the recorded token counts and cost where the source has them (token counts are
otherwise estimated from the texts, and the cost is then left to the catalog). A prompt or model
without a recording gets a clear 503 that says how to configure a real provider; the replay
provider never invents an answer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.prompts import last_user_text, prompt_id
from service.providers.base import BAD_REQUEST, Chunk, Completion, UpstreamError, Usage
from service.tokens import estimate_tokens

HOW_TO_CONFIGURE = (
    "set OPENROUTER_API_KEY (and optionally SWITCHBOARD_UPSTREAM=openrouter) to answer any "
    "prompt through OpenRouter; the replay upstream only has the benchmark recordings"
)


@dataclass(frozen=True)
class Recording:
    text: str
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None


class NoRecording(UpstreamError):
    """The replay upstream has no recorded answer for this prompt and model."""

    def __init__(self, message: str):
        super().__init__(BAD_REQUEST, message, 503, provider="replay")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):  # None and pandas' NA
        return None
    return None if math.isnan(number) else number


class ReplayProvider:
    """Recorded answers by (prompt id, model)."""

    name = "replay"

    def __init__(self, recordings: dict[tuple[str, str], Recording]):
        self.recordings = recordings
        self.by_prompt: dict[str, set[str]] = {}
        for pid, model in recordings:
            self.by_prompt.setdefault(pid, set()).add(model)
        self.models = {model for _, model in recordings}

    @classmethod
    def from_outcomes(cls, path: Path) -> ReplayProvider:
        import pandas as pd

        columns = ["prompt_id", "model", "response", "input_tokens", "output_tokens", "cost_usd"]
        rows = pd.read_parquet(path, columns=columns)
        rows = rows[rows["response"].notna() & rows["response"].str.strip().ne("")]
        recordings = {}
        for row in rows.itertuples(index=False):
            input_tokens, output_tokens = _number(row.input_tokens), _number(row.output_tokens)
            recordings[(row.prompt_id, row.model)] = Recording(
                text=row.response,
                input_tokens=int(input_tokens) if input_tokens is not None else None,
                output_tokens=int(output_tokens) if output_tokens is not None else None,
                cost_usd=_number(row.cost_usd),
            )
        return cls(recordings)

    def serves(self, model: str) -> bool:
        return model in self.models

    def models_for(self, messages: Sequence[dict[str, Any]]) -> set[str]:
        """The models with a recorded answer to this conversation's last user message."""
        return self.by_prompt.get(prompt_id(last_user_text(messages)), set())

    def _find(self, model: str, body: dict[str, Any]) -> tuple[Recording, Usage]:
        question = last_user_text(body.get("messages") or [])
        recording = self.recordings.get((prompt_id(question), model))
        if recording is None:
            raise NoRecording(
                f"replay upstream: no recorded answer of {model} to this prompt; "
                + HOW_TO_CONFIGURE
            )
        usage = Usage(
            prompt_tokens=recording.input_tokens or estimate_tokens(question),
            completion_tokens=recording.output_tokens or estimate_tokens(recording.text),
            upstream_cost_usd=recording.cost_usd,
        )
        return recording, usage

    async def complete(self, model: str, body: dict[str, Any]) -> Completion:
        recording, usage = self._find(model, body)
        result = {
            "id": f"replay-{int(time.time() * 1000)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": recording.text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        }
        return Completion(body=result, usage=usage)

    async def stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        recording, usage = self._find(model, body)
        base = {
            "id": f"replay-{int(time.time() * 1000)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return json.dumps({**base, "choices": [choice]}).encode()

        yield Chunk(chunk({"role": "assistant", "content": ""}))
        words = recording.text.split(" ")
        for i, word in enumerate(words):
            yield Chunk(chunk({"content": word if i == 0 else " " + word}))
        yield Chunk(chunk({}, "stop"))
        totals = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        yield Chunk(json.dumps({**base, "choices": [], "usage": totals}).encode(), usage=usage)
