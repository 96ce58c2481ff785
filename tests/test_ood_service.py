"""Every decision says how far its prompt is from the router's training prompts (ood_score):
in /v1/route, the response, its header, the ledger and the overview's share of traffic far
from the training data; prompts unlike any training prompt get a decision, never an error."""

from __future__ import annotations

import httpx
import pytest

from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, ledger_row, upstream_settings

ADMIN = "admin-ood"


@pytest.fixture(scope="module")
def service(database_url, open_router):
    from service.catalog import Catalog
    from service.routing.learned import LearnedRouter

    catalog = Catalog.load()
    router = LearnedRouter.load(open_router)
    assert router.ood is not None and router.shrinkage >= 0
    served = [m for m in router.models if m in catalog and catalog.get(m).priced and "/" in m]
    with (
        FakeUpstreamServer(catalog_prices(served)) as upstream,
        ServiceServer(
            upstream_settings(upstream.url, database_url, ADMIN, router_dir=open_router)
        ) as server,
    ):
        yield server


def chat(service, prompt):
    return httpx.post(
        f"{service.url}/v1/chat/completions",
        json={"model": "switchboard/auto", "messages": [{"role": "user", "content": prompt}]},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )


def record_of(service, response):
    return ledger_row(service, response, ADMIN)


UNLIKE_TRAINING = {
    "another script": "กรุณาอธิบายว่าแฮชแมปจัดการการชนกันอย่างไร และยกตัวอย่างสั้น ๆ",
    "code only": "def f(x):\n    return [i * i for i in range(x) if i % 3]\n" * 20,
    "100,000 tokens": "word " * 100_000,
    "whitespace only": "  \n\t  ",
}


@pytest.mark.parametrize("name", list(UNLIKE_TRAINING))
def test_every_decision_says_how_far_the_prompt_is_from_the_training_prompts(service, name):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    routed = httpx.post(
        f"{service.url}/v1/route",
        json={"prompt": UNLIKE_TRAINING[name]},
        headers=admin,
        timeout=60,
    )
    assert routed.status_code == 200, routed.text
    assert 0.0 <= routed.json()["ood_score"] <= 1.0
    answer = chat(service, UNLIKE_TRAINING[name])
    assert answer.status_code == 200, answer.text
    score = float(answer.headers["x-switchboard-ood-score"])
    assert answer.json()["switchboard"]["ood_score"] == pytest.approx(score, abs=1e-4)
    assert record_of(service, answer)["ood_score"] == pytest.approx(score, abs=1e-4)


def test_an_empty_prompt_is_still_a_clear_400(service):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    refused = httpx.post(f"{service.url}/v1/route", json={"prompt": ""}, headers=admin)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request"


def test_the_overview_counts_the_share_of_traffic_far_from_training(service):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    far = "Write a sonnet about the sea in the voice of a pirate captain, rhyming ABAB."
    for _ in range(2):
        assert chat(service, far).is_success
    summary = httpx.get(f"{service.url}/v1/analytics/summary", headers=admin).json()
    counted = summary["far_from_training"]
    assert counted["routed"] >= 2 and counted["ood_score_at_least"] == 0.5
    assert 0 <= counted["far"] <= counted["routed"]
    assert counted["share"] == pytest.approx(counted["far"] / counted["routed"])
