"""An LLM judge: grade a sample of logged answers through the service itself, so each grading
call is routed, priced, recorded and held against budgets like any other request, and store the
grade as feedback with source ``judge``.

Needs stored prompts and answers (``SWITCHBOARD_STORE_CONTENT=true``). A request is in the
sample when a hash of its id falls below ``share``, so reruns grade the same requests, and each
is graded once.
"""

from __future__ import annotations

import re
from datetime import datetime

import httpx
import sqlalchemy as sa

from service.config import to_sync_url
from service.migrate import upgrade
from service.routing.exploration import stable_unit
from service.tables import feedback, requests

RUBRIC = (
    "You grade an AI assistant's answer to a user's request. Judge correctness, completeness "
    "and helpfulness. Reply with one integer from 0 (useless or wrong) to 10 (fully correct "
    "and helpful), and nothing else."
)
SCORE = re.compile(r"\b(10|[0-9])\b")


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


def to_grade(database_url: str, share: float, since: datetime | None, limit: int) -> list[dict]:
    upgrade(database_url)
    judged = sa.select(feedback.c.request_id).where(feedback.c.source == "judge")
    where = (
        (requests.c.status == "ok")
        & requests.c.prompt.is_not(None)
        & requests.c.response.is_not(None)
        & requests.c.id.not_in(judged)
        & (requests.c.endpoint == "chat.completions")
        & requests.c.router.is_not(None)  # routed traffic, not the judge's own calls
    )
    if since is not None:
        where = where & (requests.c.created_at >= since)
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(requests.c.id, requests.c.prompt, requests.c.response)
            .where(where)
            .order_by(requests.c.created_at.desc())
        ).all()
    engine.dispose()
    picked = [dict(r._mapping) for r in rows if stable_unit(r.id, "judge") < share]
    return picked[:limit]


def grade(
    database_url: str,
    service_url: str,
    key: str,
    model: str,
    share: float,
    since: datetime | None = None,
    limit: int = 1000,
) -> dict[str, int]:
    """Grade the sample; counts of graded and ungradable answers."""
    counts = {"graded": 0, "unparsed": 0, "failed": 0}
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service_url, headers=auth, timeout=120) as client:
        for row in to_grade(database_url, share, since, limit):
            response = client.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "messages": grading_messages(row["prompt"], row["response"]),
                    "max_tokens": 16,
                    "temperature": 0,
                },
            )
            if response.status_code != 200:
                counts["failed"] += 1
                continue
            reply = response.json()["choices"][0]["message"].get("content") or ""
            score = parse_grade(reply)
            if score is None:
                counts["unparsed"] += 1
                continue
            client.post(
                "/v1/feedback",
                json={
                    "request_id": row["id"],
                    "score": score,
                    "source": "judge",
                    "comment": f"judge {model}",
                },
            ).raise_for_status()
            counts["graded"] += 1
    return counts
