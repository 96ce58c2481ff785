"""An LLM judge: grade a sample of logged answers through the service itself, so each grading
call is routed, priced, recorded and held against budgets like any other request, and store the
grade as feedback with source ``judge``.

Needs stored prompts and answers (``SWITCHBOARD_STORE_CONTENT=true``). A request is in the
sample when a hash of its id falls below ``share``, so reruns grade the same requests, and each
is graded once.

The judge's calls carry ``x-switchboard-purpose: judge``: the ledger tags them, and tenants'
error rates leave them out. What the judge made of each answer is kept in ``judge_verdicts``:
``graded`` (with its score, also stored as feedback) or ``unparsable`` (a reply without a grade,
paid for: a rerun skips it unless told to retry). A call that failed stores nothing, so the
next run asks again.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import sqlalchemy as sa

from service.config import to_sync_url
from service.ledger import now
from service.migrate import upgrade
from service.routing.exploration import stable_unit
from service.tables import feedback, judge_verdicts, requests

RUBRIC = (
    "You grade an AI assistant's answer to a user's request. Judge correctness, completeness "
    "and helpfulness. Reply with one integer from 0 (useless or wrong) to 10 (fully correct "
    "and helpful), and nothing else."
)
SCORE = re.compile(r"\b(10|[0-9])\b")
PURPOSE = {"x-switchboard-purpose": "judge"}  # tags the judge's own calls on the ledger
REPLY_CHARS = 2000  # of the judge's reply, kept in judge_verdicts
REASON_CHARS = 300
CHUNK = 500  # ids per IN (...) when reading the sampled answers


def grading_messages(
    prompt: str, answer: str, reference: str | None = None
) -> list[dict[str, str]]:
    """The judge's conversation for one answer (with a reference answer to compare, if any)."""
    question = f"Request:\n{prompt}\n\n"
    if reference is not None:
        question += f"Reference answer (from a strong model):\n{reference}\n\n"
    question += f"Answer:\n{answer}\n\nGrade:"
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": question}]


def parse_grade(reply: str) -> float | None:
    """The last integer 0-10 in the judge's reply, as a score in [0, 1]."""
    found = SCORE.findall(reply or "")
    return int(found[-1]) / 10 if found else None


@dataclass
class Sample:
    """The answers to grade in this run, and what the selection left out."""

    rows: list[dict[str, Any]]  # id, prompt, response
    stored: int  # stored, auto-routed answers in the range, graded or not
    skipped_unparsable: int  # in the sample, with an unparsable verdict, not retried


@dataclass
class JudgeRun:
    """What one run of the judge did."""

    model: str
    stored: int = 0
    sampled: int = 0  # answers the judge was asked about
    graded: int = 0
    unparsable: int = 0  # replies without a grade (stored as such)
    failed: int = 0  # calls that failed, or grades the service did not store
    skipped_unparsable: int = 0  # earlier replies without a grade, not asked again
    spent_usd: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)  # reason -> how many
    unparsable_replies: list[str] = field(default_factory=list)  # the first few

    def counts(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "graded": self.graded,
            "unparsable": self.unparsable,
            "failed": self.failed,
            "skipped_unparsable": self.skipped_unparsable,
            "spent_usd": round(self.spent_usd, 8),
        }

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.failures[reason[:REASON_CHARS]] += 1

    def problem(self) -> str | None:
        """Why nothing could be graded; None when something was, or nothing was left to."""
        if self.graded:
            return None
        if not self.sampled:
            if self.stored:
                return None  # every sampled answer has a verdict already
            return (
                "no stored answers to grade: the judge grades auto-routed chat completions whose "
                "prompt and answer the service stored (SWITCHBOARD_STORE_CONTENT=true)"
            )
        reason = self.failures.most_common(1)[0][0] if self.failures else None
        if self.failed == self.sampled:
            return f"every judge call failed ({self.failed}): {reason}"
        example = self.unparsable_replies[0][:200] if self.unparsable_replies else ""
        unparsable = (
            f"{self.unparsable} replies of {self.model} held no grade from 0 to 10 (stored as "
            f"unparsable; --retry-unparsed asks again), e.g. {example!r}"
        )
        if not self.failed:
            return unparsable
        return f"{self.failed} judge calls failed ({reason}) and {unparsable}"


def to_grade(
    database_url: str,
    share: float,
    since: datetime | None,
    limit: int,
    retry_unparsed: bool = False,
) -> Sample:
    """The sampled answers with no verdict yet (newest first, at most ``limit``); with
    ``retry_unparsed``, those whose earlier reply held no grade too."""
    upgrade(database_url)
    judged = sa.select(feedback.c.request_id).where(feedback.c.source == "judge")
    unparsable = sa.select(judge_verdicts.c.request_id).where(
        judge_verdicts.c.outcome == "unparsable"
    )
    where = (
        (requests.c.status == "ok")
        & requests.c.prompt.is_not(None)
        & requests.c.response.is_not(None)
        & (requests.c.endpoint == "chat.completions")
        & requests.c.router.is_not(None)  # routed traffic, not the judge's own calls
        & requests.c.purpose.is_(None)
    )
    if since is not None:
        where = where & (requests.c.created_at >= since)
    engine = sa.create_engine(to_sync_url(database_url))
    try:
        with engine.connect() as conn:
            stored = conn.scalar(sa.select(sa.func.count()).where(where)) or 0
            candidates = conn.execute(
                sa.select(requests.c.id, requests.c.id.in_(unparsable).label("unparsable"))
                .where(where & requests.c.id.not_in(judged))
                .order_by(requests.c.created_at.desc(), requests.c.id)
            ).all()
            sampled = [c for c in candidates if stable_unit(c.id, "judge") < share]
            skipped = 0 if retry_unparsed else sum(1 for c in sampled if c.unparsable)
            ids = [c.id for c in sampled if retry_unparsed or not c.unparsable][:limit]
            content: dict[str, dict[str, Any]] = {}
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                query = sa.select(requests.c.id, requests.c.prompt, requests.c.response).where(
                    requests.c.id.in_(chunk)
                )
                content.update({r.id: dict(r._mapping) for r in conn.execute(query)})
    finally:
        engine.dispose()
    return Sample([content[i] for i in ids], int(stored), skipped)


def _error_reason(response: httpx.Response) -> str:
    """The service's error, as ``status code: message``."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{response.status_code}: {response.text[:REASON_CHARS]}"


def store_verdict(
    engine: sa.Engine,
    request_id: str,
    outcome: str,
    score: float | None,
    model: str,
    judge_request_id: str | None,
    reply: str,
) -> None:
    """The judge's verdict on one answer, replacing an earlier one."""
    with engine.begin() as conn:
        conn.execute(judge_verdicts.delete().where(judge_verdicts.c.request_id == request_id))
        conn.execute(
            judge_verdicts.insert().values(
                request_id=request_id,
                outcome=outcome,
                score=score,
                judge_model=model,
                judge_request_id=judge_request_id,
                reply=reply[:REPLY_CHARS],
                created_at=now(),
            )
        )


def grade(
    database_url: str,
    service_url: str,
    key: str,
    model: str,
    share: float,
    since: datetime | None = None,
    limit: int = 1000,
    retry_unparsed: bool = False,
) -> JudgeRun:
    """Grade the sample through the service; what was graded, unparsable, failed or skipped."""
    sample = to_grade(database_url, share, since, limit, retry_unparsed)
    run = JudgeRun(model, sample.stored, len(sample.rows))
    run.skipped_unparsable = sample.skipped_unparsable
    headers = {"Authorization": f"Bearer {key}", **PURPOSE}
    engine = sa.create_engine(to_sync_url(database_url))
    try:
        with httpx.Client(base_url=service_url, headers=headers, timeout=120) as client:
            for row in sample.rows:
                _grade_one(client, engine, run, row)
    finally:
        engine.dispose()
    return run


def _grade_one(client: httpx.Client, engine: sa.Engine, run: JudgeRun, row: dict) -> None:
    try:
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": run.model,
                "messages": grading_messages(row["prompt"], row["response"]),
                "max_tokens": 16,
                "temperature": 0,
            },
        )
    except httpx.HTTPError as error:
        run.fail(f"cannot reach the service at {client.base_url}: {error}")
        return
    if response.status_code != 200:
        run.fail(_error_reason(response))
        return
    body = response.json()
    run.spent_usd += float((body.get("usage") or {}).get("cost") or 0.0)
    choices = body.get("choices") or [{}]
    reply = (choices[0].get("message") or {}).get("content")
    reply = reply if isinstance(reply, str) else ""
    score = parse_grade(reply)
    if score is None:
        store_verdict(engine, row["id"], "unparsable", None, run.model, body.get("id"), reply)
        run.unparsable += 1
        if len(run.unparsable_replies) < 3:
            run.unparsable_replies.append(reply)
        return
    feedback_body = {
        "request_id": row["id"],
        "score": score,
        "source": "judge",
        "comment": f"judge {run.model}",
    }
    try:
        stored = client.post("/v1/feedback", json=feedback_body)
    except httpx.HTTPError as error:
        run.fail(f"the grade was not stored: cannot reach the service: {error}")
        return
    if stored.status_code != 201:
        run.fail(f"the grade was not stored: {_error_reason(stored)}")
        return
    store_verdict(engine, row["id"], "graded", score, run.model, body.get("id"), reply)
    run.graded += 1
