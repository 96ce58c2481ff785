"""``switchboard judge`` end to end, offline: the service in front of the fake upstream in judge
mode (its grade depends on the model that wrote the answer, or it replies without one). The
judge's calls are recorded and priced like any request and tagged as the judge's (left out of
the error rate); each answer is graded once; a reply without a grade is stored as such and not
paid for again unless asked; and a run that grades nothing exits non-zero with the reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa
from openai import OpenAI
from typer.testing import CliRunner

from service.config import to_sync_url
from service.tables import judge_verdicts, requests
from switchboard.cli import app
from switchboard.fake_upstream import NO_GRADE, FakeUpstreamServer, catalog_prices
from switchboard.service_process import free_port
from tests.servers import ServiceServer, upstream_settings
from training.judge import parse_grade

ADMIN = "sb-admin-judge"
JUDGE = "openai/gpt-4o"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def test_grades_parse_to_scores():
    assert parse_grade("8") == 0.8 and parse_grade("Score: 10") == 1.0
    assert parse_grade("I'd say 3 out of... no, 6") == 0.6
    assert parse_grade("excellent") is None and parse_grade("") is None
    assert parse_grade(NO_GRADE) is None


@pytest.fixture(scope="module")
def stack(small_router, database_url):
    """The fake upstream in judge mode, the service in front of it (content stored), a
    tenant's client, and the router's first two models (the judge grades the first 8, the
    second's answers get a reply without a grade)."""
    router_dir = small_router[0]
    models = json.loads((router_dir / "router.json").read_text())["models"]
    good, ungradable = models[0], models[1]
    grades: dict[str, int | None] = {good: 8, ungradable: None}
    with FakeUpstreamServer(catalog_prices([*models, JUDGE]), judge_grades=grades) as upstream:
        settings = upstream_settings(
            upstream.url,
            database_url,
            ADMIN,
            store_content=True,
            router_dir=router_dir,
            retries=0,
        )
        with ServiceServer(settings) as service:
            client = OpenAI(
                base_url=f"{service.url}/v1", api_key=service.create_key("app"), max_retries=0
            )
            yield upstream, service, client, good, ungradable


def answer(client: OpenAI, model: str, text: str) -> str:
    """An auto-routed answer, routed to ``model`` (the only allowed one)."""
    completion = client.chat.completions.create(
        model="switchboard/auto",
        messages=[{"role": "user", "content": text}],
        extra_body={"switchboard": {"allowed_models": [model]}},
    )
    assert (completion.choices[0].message.content or "").startswith(f"echo[{model}]")
    return completion.id


def judge(database_url: str, url: str, *more: str):
    env = {"SWITCHBOARD_ADMIN_KEY": ADMIN, "SWITCHBOARD_DATABASE_URL": database_url}
    args = ["judge", "--model", JUDGE, "--share", "1", "--url", url, *more]
    result = CliRunner(env=env).invoke(app, args, catch_exceptions=False)
    counts = json.loads(result.stdout.splitlines()[0]) if result.stdout.strip() else None
    return result, counts


def flushed(service) -> None:
    # the ledger is written off the response path: this read waits for it
    httpx.get(f"{service.url}/v1/requests", headers=ADMIN_HEADERS).raise_for_status()


def verdicts(database_url: str) -> dict[str, tuple[str, float | None, str]]:
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(judge_verdicts)).all()
    engine.dispose()
    return {r.request_id: (r.outcome, r.score, r.reply) for r in rows}


def judge_calls(database_url: str) -> list[dict]:
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(requests).where(requests.c.requested_model == JUDGE)).all()
    engine.dispose()
    return [dict(r._mapping) for r in rows]


def test_the_judge_grades_each_answer_once_and_keeps_replies_without_a_grade(stack, database_url):
    upstream, service, client, good, ungradable = stack
    graded_ids = [answer(client, good, f"Explain closures, take {i}") for i in range(2)]
    ungraded_id = answer(client, ungradable, "Explain monads")
    flushed(service)
    sent = len(upstream.state.requests)

    result, counts = judge(database_url, service.url)
    assert result.exit_code == 0, result.output
    assert counts["sampled"] == 3 and counts["graded"] == 2
    assert counts["unparsable"] == 1 and counts["failed"] == 0 and counts["spent_usd"] > 0
    assert "1 replies held no grade" in result.stderr and NO_GRADE in result.stderr
    assert len(upstream.state.requests) == sent + 3
    stored = verdicts(database_url)
    assert {i: stored[i][:2] for i in graded_ids} == {i: ("graded", 0.8) for i in graded_ids}
    assert stored[ungraded_id] == ("unparsable", None, NO_GRADE)
    flushed(service)
    calls = judge_calls(database_url)
    assert len(calls) == 3 and {c["purpose"] for c in calls} == {"judge"}
    assert all(c["cost_usd"] > 0 and c["router"] is None for c in calls)
    quality = httpx.get(f"{service.url}/v1/analytics/quality", headers=ADMIN_HEADERS).json()
    assert quality["feedback"] == 2 and quality["by_model"][0]["mean"] == 0.8

    # a rerun pays for nothing: the graded answers are done, the unparsable one is skipped
    rerun, counts = judge(database_url, service.url)
    assert rerun.exit_code == 0, rerun.output
    assert counts["sampled"] == 0 and counts["skipped_unparsable"] == 1
    assert "--retry-unparsed" in rerun.stderr and "nothing left to grade" in rerun.stderr
    assert len(upstream.state.requests) == sent + 3

    # asked to retry, it asks again; still no grade: nothing could be graded, stored again
    again, counts = judge(database_url, service.url, "--retry-unparsed")
    assert again.exit_code == 2, again.output
    assert counts["sampled"] == 1 and counts["unparsable"] == 1
    assert "nothing could be graded" in again.stderr and "held no grade" in again.stderr
    assert len(upstream.state.requests) == sent + 4
    assert verdicts(database_url)[ungraded_id][0] == "unparsable"

    # the judge now grades that model's answers: the retry grades it, once
    upstream.state.judge_grades[ungradable] = 3
    retried, counts = judge(database_url, service.url, "--retry-unparsed")
    assert retried.exit_code == 0, retried.output
    assert (counts["sampled"], counts["graded"], counts["unparsable"]) == (1, 1, 0)
    assert verdicts(database_url)[ungraded_id][:2] == ("graded", 0.3)
    assert judge(database_url, service.url, "--retry-unparsed")[1]["sampled"] == 0
    assert len(upstream.state.requests) == sent + 5


def test_when_nothing_can_be_graded_the_judge_says_why_and_its_failures_are_not_tenant_errors(
    stack, database_url
):
    upstream, service, client, good, _ = stack
    start = datetime.now(UTC).isoformat()
    ids = [answer(client, good, f"Explain recursion, take {i}") for i in range(2)]
    flushed(service)
    upstream.state.add_fault(JUDGE, "500", times=-1)
    try:
        result, counts = judge(database_url, service.url)
    finally:
        httpx.delete(f"{upstream.control_url}/faults").raise_for_status()
    assert result.exit_code == 2, result.output
    assert (counts["sampled"], counts["graded"], counts["failed"]) == (2, 0, 2)
    assert "nothing could be graded: every judge call failed (2): 502 upstream_error" in (
        result.stderr
    )
    flushed(service)
    failed_calls = [c for c in judge_calls(database_url) if c["status"] == "error"]
    assert len(failed_calls) == 2 and {c["purpose"] for c in failed_calls} == {"judge"}
    assert not set(ids) & set(verdicts(database_url))  # a failed call stores no verdict

    summary = httpx.get(
        f"{service.url}/v1/analytics/summary", params={"start": start}, headers=ADMIN_HEADERS
    ).json()
    assert (summary["requests"], summary["errors"], summary["error_rate"]) == (4, 0, 0.0)
    assert (summary["judge"]["requests"], summary["judge"]["errors"]) == (2, 2)
    tenant = {"Authorization": f"Bearer {client.api_key}"}
    own = httpx.get(f"{service.url}/v1/analytics/summary", params={"start": start}, headers=tenant)
    assert (own.json()["errors"], own.json()["judge"]["requests"]) == (0, 0)

    # a service it cannot reach: the reason, and still nothing stored
    unreachable = f"http://127.0.0.1:{free_port()}"
    down, counts = judge(database_url, unreachable)
    assert down.exit_code == 2 and counts["failed"] == 2
    assert f"cannot reach the service at {unreachable}" in down.stderr

    # the failed answers are asked about again on the next run, and graded
    graded, counts = judge(database_url, service.url)
    assert graded.exit_code == 0, graded.output
    assert (counts["sampled"], counts["graded"], counts["failed"]) == (2, 2, 0)
    assert {verdicts(database_url)[i][:2] for i in ids} == {("graded", 0.8)}


def test_a_ledger_without_stored_answers_is_a_clear_error(tmp_path):
    result, counts = judge(f"sqlite:///{tmp_path / 'empty.db'}", "http://127.0.0.1:9")
    assert result.exit_code == 2 and counts["sampled"] == 0
    assert "no stored answers to grade" in result.stderr
    assert "SWITCHBOARD_STORE_CONTENT=true" in result.stderr


def test_only_the_admin_may_tag_a_call_as_the_judge(stack):
    _, service, client, good, _ = stack
    body = {"model": good, "messages": [{"role": "user", "content": "Hi"}]}
    url = f"{service.url}/v1/chat/completions"
    tenant = {"Authorization": f"Bearer {client.api_key}", "x-switchboard-purpose": "judge"}
    refused = httpx.post(url, json=body, headers=tenant)
    assert refused.status_code == 403
    assert refused.json()["error"]["param"] == "x-switchboard-purpose"
    unknown = httpx.post(url, json=body, headers={**ADMIN_HEADERS, "x-switchboard-purpose": "x"})
    assert unknown.status_code == 400
    assert "is not one of judge" in unknown.json()["error"]["message"]
    tagged = httpx.post(url, json=body, headers={**ADMIN_HEADERS, "x-switchboard-purpose": "judge"})
    assert tagged.status_code == 200
    flushed(service)
    row = httpx.get(f"{service.url}/v1/requests/{tagged.json()['id']}", headers=ADMIN_HEADERS)
    assert row.json()["purpose"] == "judge"
