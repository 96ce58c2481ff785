"""Calibrating models on your own prompts: answers through the service, graded by a judge model.

Every prompt goes to every model through the running service (priced, recorded and held against
budgets like any request), the judge grades each answer (its rubric, training/judge.py; with the
reference model's answer beside it when one is given), and the grades become an outcomes file
(``prompt``, ``prompt_id``, ``model``, ``quality`` = grade / 10, ``cost_usd``, tokens), which
``switchboard models onboard`` then fits. The cost is estimated before anything is sent, from
the prompts' tokens and each model's typical answer length at catalog prices, and a plan over
the cap is refused. A rerun skips the (prompt, model) pairs the output file already holds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from service.catalog import Catalog
from service.tokens import estimate_tokens
from training.datasets import RAW_DIR
from training.judge import PURPOSE, grading_messages, parse_grade
from training.prompts import prompt_id

DEFAULT_PROMPTS = RAW_DIR / "arena-hard-v2" / "question.jsonl"  # Apache-2.0
JUDGE_OUTPUT_TOKENS = 16
ANSWER_TOKENS_CAP = 1024  # each answer is cut here: bounded cost, and enough to grade


class CalibrationError(ValueError):
    """A calibration that cannot start; nothing has been sent."""


def load_prompts(path: Path | None, sample: int, seed: int = 0) -> list[str]:
    """The prompts: a JSONL or CSV file's ``prompt`` column, or a seeded sample of the 750
    Arena-Hard-v2 prompts."""
    source = path or DEFAULT_PROMPTS
    try:
        if source.suffix.lower() == ".csv":
            table = pd.read_csv(source, dtype={"prompt": str})
        else:
            table = pd.read_json(source, lines=True)
    except (OSError, ValueError) as error:
        raise CalibrationError(f"{source}: cannot be read: {error}") from None
    if "prompt" not in table:
        raise CalibrationError(f"{source}: has no 'prompt' column")
    prompts = [p for p in table["prompt"].dropna().astype(str) if p.strip()]
    if not prompts:
        raise CalibrationError(f"{source}: has no prompts")
    unique = list(dict.fromkeys(prompts))
    return random.Random(seed).sample(unique, min(sample, len(unique)))


@dataclass
class Plan:
    prompts: list[str]
    models: list[str]
    judge: str
    reference: str | None
    pending: list[tuple[str, str]]  # (prompt, model) still to answer and grade
    estimated_usd: float


def _cost(catalog: Catalog, model: str, input_tokens: float, output_tokens: float) -> float:
    info = catalog.get(model)
    cost = info.cost_usd(input_tokens, output_tokens) if info.priced else None
    if cost is None:
        raise CalibrationError(f"{model} has no price in the catalog: its cost cannot be bounded")
    return cost


def plan(
    prompts: Sequence[str],
    models: Sequence[str],
    judge: str,
    reference: str | None,
    catalog: Catalog,
    done: set[tuple[str, str]],
) -> Plan:
    """What is left to do and what it is expected to cost."""
    unknown = [m for m in [*models, judge, *([reference] if reference else [])] if m not in catalog]
    if unknown:
        raise CalibrationError(f"not in the catalog: {', '.join(unknown)} (GET /v1/models)")
    answered = list(dict.fromkeys([*models, *([reference] if reference else [])]))
    pending = [(p, m) for p in prompts for m in answered if (prompt_id(p), m) not in done]
    total = 0.0
    for prompt, model in pending:
        tokens = estimate_tokens(prompt)
        info = catalog.get(model)
        answer = min(info.typical_output_tokens or catalog.median_output_tokens, ANSWER_TOKENS_CAP)
        total += _cost(catalog, model, tokens, answer)
        if model in models:  # the reference answer is not graded
            extra = answer * (2 if reference else 1)
            total += _cost(catalog, judge, tokens + extra + 100, JUDGE_OUTPUT_TOKENS)
    return Plan(list(prompts), list(models), judge, reference, pending, total)


@dataclass
class Counts:
    graded: int = 0
    unparsed: int = 0
    failed: int = 0
    spent_usd: float = 0.0
    failures: list[str] = field(default_factory=list)


def already_graded(output: Path) -> set[tuple[str, str]]:
    """(prompt id, model) pairs the output file holds (a rerun skips them)."""
    if not output.exists():
        return set()
    with output.open() as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return {(r["prompt_id"], r["model"]) for r in rows if "prompt_id" in r and "model" in r}


def _ask(
    client: httpx.Client,
    model: str,
    messages: list[dict[str, str]],
    headers: dict[str, str] | None = None,
    **more: Any,
) -> Any:
    response = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": messages, **more},
        headers=headers,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{model}: {response.status_code} {response.text[:200]}")
    return response.json()


def run(
    client: httpx.Client,
    work: Plan,
    output: Path,
    progress: Callable[[int], None] = lambda n: None,
) -> Counts:
    """Answer and grade every pending pair, prompt by prompt, appending each graded row to
    ``output`` as soon as it is graded (an interrupted run loses at most one prompt's work)."""
    counts = Counts()
    by_prompt: dict[str, list[str]] = {}
    for prompt, model in work.pending:
        by_prompt.setdefault(prompt, []).append(model)
    with output.open("a") as out:
        for prompt, models in by_prompt.items():
            reference, reference_body = None, None
            if work.reference is not None:
                reference_body = _call(
                    client, counts, work.reference, [_user(prompt)], max_tokens=ANSWER_TOKENS_CAP
                )
                reference = _text(reference_body) if reference_body else None
            for model in models:
                if model not in work.models:
                    progress(1)  # the reference model's own answer, done above
                    continue
                body = (
                    reference_body
                    if model == work.reference
                    else _call(client, counts, model, [_user(prompt)], max_tokens=ANSWER_TOKENS_CAP)
                )
                progress(1)
                if body is None:
                    continue
                verdict = _call(
                    client,
                    counts,
                    work.judge,
                    grading_messages(prompt, _text(body), reference),
                    headers=PURPOSE,  # the judge's calls: kept out of tenants' error rates
                    max_tokens=JUDGE_OUTPUT_TOKENS,
                    temperature=0,
                )
                grade = parse_grade(_text(verdict)) if verdict else None
                if verdict is not None and grade is None:
                    counts.unparsed += 1
                if grade is None:
                    continue
                usage = body.get("usage") or {}
                row = {
                    "prompt_id": prompt_id(prompt),
                    "prompt": prompt,
                    "model": model,
                    "quality": grade,
                    "cost_usd": usage.get("cost"),
                    "input_tokens": usage.get("prompt_tokens"),
                    "output_tokens": usage.get("completion_tokens"),
                    "source": "calibration",
                    "task": f"judge:{work.judge}",
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
                counts.graded += 1
    return counts


def _user(prompt: str) -> dict[str, str]:
    return {"role": "user", "content": prompt}


def _call(
    client: httpx.Client,
    counts: Counts,
    model: str,
    messages: list[dict[str, str]],
    headers: dict[str, str] | None = None,
    **more: Any,
) -> dict[str, Any] | None:
    """One answer through the service, its cost counted; None (and counted) when it failed."""
    try:
        body = _ask(client, model, messages, headers, **more)
    except (RuntimeError, httpx.HTTPError) as error:
        counts.failed += 1
        counts.failures.append(str(error)[:300])
        return None
    counts.spent_usd += float((body.get("usage") or {}).get("cost") or 0.0)
    return dict(body)


def _text(body: dict[str, Any]) -> str:
    choices = body.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else ""
