"""The dashboard in a real browser: Playwright drives Debian's chromium against a running
service with seeded traffic; every page must load without a JavaScript error and show the
seeded numbers; screenshots go to SWITCHBOARD_SCREENSHOTS (default: the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from tests.servers import ServiceServer, upstream_settings

CHROMIUM = os.environ.get("SWITCHBOARD_TEST_CHROMIUM") or shutil.which("chromium")
HAVE_BROWSER = CHROMIUM is not None and Path(CHROMIUM).is_file()
ADMIN = "sb-admin-dashboard"
DEAR = "openai/gpt-4-1106-preview"
if not HAVE_BROWSER and os.environ.get("SWITCHBOARD_REQUIRE_BROWSER"):
    raise RuntimeError(
        "SWITCHBOARD_REQUIRE_BROWSER is set but there is no chromium "
        "(apt install chromium, or SWITCHBOARD_TEST_CHROMIUM=/path/to/chromium)"
    )
pytestmark = pytest.mark.skipif(
    not HAVE_BROWSER, reason="no chromium on this machine (apt install chromium); CI installs it"
)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    import json

    from service.config import Settings

    models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
    database = tmp_path_factory.mktemp("ledger") / "ledger.db"
    with FakeUpstreamServer(catalog_prices(models)) as upstream:
        settings = upstream_settings(upstream.url, f"sqlite:///{database}", ADMIN, retries=0)
        with ServiceServer(settings) as service:
            keys = {}
            for tenant in ("acme", "globex"):
                response = httpx.post(
                    f"{service.url}/v1/admin/keys",
                    json={"tenant": tenant},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                )
                keys[tenant] = response.json()["key"]
            httpx.post(
                f"{service.url}/v1/admin/experiments",
                json={
                    "name": "ab",
                    "arms": [{"router": "champion"}, {"router": "heuristic"}],
                    "unit": "request",  # two tenants are too few for unit tenant
                },
                headers={"Authorization": f"Bearer {ADMIN}"},
            ).raise_for_status()
            acme = OpenAI(base_url=f"{service.url}/v1", api_key=keys["acme"], max_retries=0)
            ids = []
            prompts = [
                "What is 2 + 2?",
                "Prove that there are infinitely many primes.",
                "Write a Python function that reverses a linked list.",
                "Translate 'good morning' into French.",
                "Explain how a transformer's attention works, with the equations.",
                "Name a colour.",
            ]
            for i in range(12):
                completion = acme.chat.completions.create(
                    model="switchboard/auto",
                    messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                )
                ids.append(completion.id)
            for _ in range(3):
                acme.chat.completions.create(
                    model=DEAR, messages=[{"role": "user", "content": "Summarize war and peace"}]
                )
            httpx.post(
                f"{upstream.control_url}/faults", json={"model": DEAR, "fault": "503", "times": 1}
            )
            with pytest.raises(openai.APIStatusError):
                acme.chat.completions.create(
                    model=DEAR, messages=[{"role": "user", "content": "x"}]
                )
            for request_id, score in zip(ids[:6], (1, 1, 0, 1, 0.5, 1), strict=True):
                httpx.post(
                    f"{service.url}/v1/feedback",
                    json={"request_id": request_id, "score": score},
                    headers={"Authorization": f"Bearer {keys['acme']}"},
                ).raise_for_status()
            httpx.post(
                f"{service.url}/v1/admin/budgets",
                json={"scope": "tenant:acme", "period": "month", "limit_usd": 5.0},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ).raise_for_status()
            globex = OpenAI(base_url=f"{service.url}/v1", api_key=keys["globex"], max_retries=0)
            for _ in range(3):
                globex.chat.completions.create(
                    model=DEAR, messages=[{"role": "user", "content": "Only globex sees this"}]
                )
            yield service, keys


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"),
                *(
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                ),
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    where = os.environ.get("SWITCHBOARD_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Session:
    """A logged-in browser tab that records every JavaScript error."""

    def __init__(self, browser, service, key, shots):
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        self.service, self.shots = service, shots
        self.page.goto(f"{service.url}/dashboard/login")
        self.page.get_by_test_id("login-key").fill(key)
        self.page.get_by_test_id("login-submit").click()
        self.page.wait_for_url("**/dashboard/overview")
        self.ready()

    def ready(self):
        self.page.wait_for_selector("main[data-ready]", timeout=20_000)
        assert self.page.locator("main").get_attribute("data-ready") == "true", self.text("error")

    def open(self, path):
        self.page.goto(f"{self.service.url}{path}")
        self.ready()

    def text(self, testid):
        return self.page.get_by_test_id(testid).inner_text()

    def chart_drawn(self, testid):
        return self.page.locator(f"[data-testid={testid}] .main-svg").count() > 0

    def shot(self, name):
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def api(service, key, path, **params):
    response = httpx.get(
        f"{service.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}
    )
    response.raise_for_status()
    return response.json()


def usd(value):
    """As the dashboard shows dollars: 4 decimals, 6 below a cent."""
    return f"${value:.6f}" if abs(value) < 0.01 else f"${value:.4f}"


def test_every_page_shows_the_seeded_numbers_without_errors(seeded, browser, shots):
    service, keys = seeded
    tab = Session(browser, service, keys["acme"], shots)
    summary = api(service, keys["acme"], "/v1/analytics/summary")
    assert summary["requests"] == 16 and summary["errors"] == 1
    assert usd(summary["spend_usd"]) in tab.text("card-spend-month")
    assert "of $5.0000 budget" in tab.text("card-spend-month")
    assert tab.text("card-requests").splitlines()[1] == "16"
    assert usd(summary["savings"]["saved_usd"]) in tab.text("card-saved")
    assert "6.3 %" in tab.text("card-error-rate")  # 1 of 16
    far = summary["far_from_training"]
    assert far["routed"] > 0  # the seeded traffic is routed, each decision with its ood_score
    assert f"{far['far']} of {far['routed']} routed prompts" in tab.text("card-far-from-training")
    assert tab.chart_drawn("chart-daily-spend")
    tab.shot("overview")

    tab.open("/dashboard/spend")
    assert tab.chart_drawn("chart-spend-by-model")
    by_model = tab.text("table-spend-by-model")
    assert DEAR in by_model and "globex" not in tab.text("table-spend-by-tenant")
    tab.shot("spend")

    tab.open("/dashboard/routing")
    assert tab.chart_drawn("chart-mix") and tab.chart_drawn("chart-curve")
    mix = api(service, keys["acme"], "/v1/analytics/mix")["data"]
    assert mix[0]["model"] in tab.text("table-mix")
    models = api(service, keys["acme"], "/v1/models")["data"]
    scored = [m for m in models if m["switchboard"].get("routable")]
    shown = tab.text("table-models")
    assert scored and all(m["id"] in shown for m in scored)
    assert str(scored[0]["switchboard"]["graded_prompts"]) in shown
    tab.shot("routing")

    tab.open("/dashboard/quality")
    assert tab.chart_drawn("chart-feedback-by-model") and tab.chart_drawn("chart-calibration")
    quality = api(service, keys["acme"], "/v1/analytics/quality")
    assert quality["feedback"] == 6
    assert f"{quality['by_router'][0]['mean']:.3f}" in tab.text("table-quality-by-router")
    tab.shot("quality")

    tab.open("/dashboard/budgets")
    budgets = tab.text("table-budgets")
    assert "tenant:acme" in budgets and "$5.0000" in budgets
    assert tab.chart_drawn("chart-budgets")
    tab.shot("budgets")

    tab.open("/dashboard/experiments")
    arms = tab.text("table-experiment-0")
    assert "champion" in arms and "heuristic" in arms
    experiment = api(service, keys["acme"], "/v1/experiments")["data"][0]
    served = [a for a in experiment["results"] if a["requests"]]
    assert sum(a["requests"] for a in served) == 12  # acme's auto-routed requests
    assert tab.chart_drawn("chart-experiment-0")
    tab.shot("experiments")

    tab.open("/dashboard/requests")
    assert tab.text("requests-summary").startswith("16 requests, 1 errors")
    assert tab.page.locator("[data-testid=table-requests] tbody tr").count() == 16
    tab.page.locator("[data-testid=table-requests] a.request").first.click()
    tab.page.wait_for_url("**/dashboard/requests?id=*")
    tab.ready()
    assert "Request sbr-" in tab.page.locator("h1").inner_text()
    import re

    detail = tab.text("table-request")
    costs = re.findall(r"cost_usd\s+(\S+)", detail)
    assert costs and all(re.fullmatch(r"\$\d+\.\d{4}(\d\d)?|-", c) for c in costs), costs
    tab.shot("request-detail")
    assert tab.errors == []


def test_a_tenant_sees_only_its_own_data(seeded, browser, shots):
    service, keys = seeded
    tab = Session(browser, service, keys["globex"], shots)
    assert tab.text("card-requests").splitlines()[1] == "3"
    tab.open("/dashboard/requests")
    assert tab.page.locator("[data-testid=table-requests] tbody tr").count() == 3
    assert tab.errors == []
    refused = httpx.get(
        f"{service.url}/v1/analytics/summary",
        params={"tenant": "acme"},
        headers={"Authorization": f"Bearer {keys['globex']}"},
    )
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "tenant"


def test_bad_input_shows_a_clear_message_never_a_stack_trace(seeded, browser, shots):
    service, keys = seeded
    tab = Session(browser, service, keys["acme"], shots)
    tab.page.goto(f"{service.url}/dashboard/overview?start=yesterday")
    tab.page.wait_for_selector("main[data-ready]")
    message = tab.text("error")
    assert "not a date" in message and "Traceback" not in tab.page.content()
    tab.shot("bad-date")
    tab.page.goto(f"{service.url}/dashboard/overview?start=2026-02-01&end=2026-01-01")
    tab.page.wait_for_selector("main[data-ready]")
    assert "start must be before end" in tab.text("error")
    # the only console errors are the browser's notes of the refused (400) API calls
    assert all("status of 400" in error for error in tab.errors), tab.errors
    missing = httpx.get(f"{service.url}/dashboard/nope")
    assert missing.status_code == 404 and "No such page" in missing.text
    assert "Traceback" not in missing.text
