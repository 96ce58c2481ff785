"""The LLM judge grades logged answers through the service: its calls are recorded and priced
like any request, each answer is graded once, and the grade is stored as judge feedback."""

from __future__ import annotations

import json

import httpx
from openai import OpenAI

from service.config import Settings
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, upstream_settings
from training.judge import grade, parse_grade

ADMIN = "sb-admin-judge"
JUDGE = "openai/gpt-4o"


def test_grades_parse_to_scores():
    assert parse_grade("8") == 0.8 and parse_grade("Score: 10") == 1.0
    assert parse_grade("I'd say 3 out of... no, 6") == 0.6
    assert parse_grade("excellent") is None and parse_grade("") is None


def test_the_judge_grades_each_sampled_answer_once_through_the_service(tmp_path):
    models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    with FakeUpstreamServer(catalog_prices([*models, JUDGE])) as upstream:
        settings = upstream_settings(upstream.url, database, ADMIN, store_content=True)
        with ServiceServer(settings) as service:
            client = OpenAI(
                base_url=f"{service.url}/v1", api_key=service.create_key("app"), max_retries=0
            )
            answered = client.chat.completions.create(
                model="switchboard/auto",
                messages=[{"role": "user", "content": "Explain closures, grade 7"}],
            )
            # the ledger is written off the response path: this read waits for it
            httpx.get(f"{service.url}/v1/requests", headers={"Authorization": f"Bearer {ADMIN}"})
            # the fake upstream echoes its input, so the judge "replies" with the answer's 7
            counts = grade(database, service.url, ADMIN, JUDGE, share=1.0)
            assert counts == {"graded": 1, "unparsed": 0, "failed": 0}
            assert grade(database, service.url, ADMIN, JUDGE, share=1.0)["graded"] == 0
            admin = {"Authorization": f"Bearer {ADMIN}"}
            rows = httpx.get(f"{service.url}/v1/requests", headers=admin).json()["data"]
            judge_calls = [r for r in rows if r["served_model"] == JUDGE]
            assert len(judge_calls) == 1 and judge_calls[0]["cost_usd"] > 0
            quality = httpx.get(f"{service.url}/v1/analytics/quality", headers=admin).json()
            assert quality["feedback"] == 1
            assert quality["by_model"][0]["mean"] == 0.7
            assert answered.id != judge_calls[0]["id"]
