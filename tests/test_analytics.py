"""The analytics API on a ledger with known rows, on SQLite and PostgreSQL: time buckets,
dimensions, savings, mix, quality intervals, calibration, tenant scoping, and bad input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest

from service.catalog import Catalog
from service.config import to_async_url
from service.ledger import Ledger
from service.tables import feedback, requests
from switchboard.fake_upstream import FakeUpstreamServer
from tests.servers import ServiceServer, upstream_settings

ADMIN = "sb-admin-analytics"
CHEAP, DEAR = "mistralai/mixtral-8x7b-instruct", "openai/gpt-4-1106-preview"
DAY1, DAY2 = datetime(2026, 3, 1, 10, 30, tzinfo=UTC), datetime(2026, 3, 2, 15, 45, tzinfo=UTC)


def row(i, tenant_id, when, model, cost, status="ok", router="learned", p_pass=0.8):
    return {
        "id": f"r{i}",
        "created_at": when,
        "tenant_id": tenant_id,
        "api_key_id": None,
        "endpoint": "chat.completions",
        "requested_model": "switchboard/auto",
        "router": router,
        "chosen_model": model,
        "served_model": model if status == "ok" else None,
        "candidates": [
            {"model": CHEAP, "p_pass": p_pass, "expected_cost_usd": 0.001},
            {"model": DEAR, "p_pass": 0.95, "expected_cost_usd": 0.01},
        ],
        "status": status,
        "http_status": 200 if status == "ok" else 502,
        "attempts": 1,
        "stream": False,
        "latency_ms": 100.0 + i,
        "overhead_ms": 1.0,
        "prompt_tokens": 100 if status == "ok" else None,
        "completion_tokens": 50 if status == "ok" else None,
        "cost_usd": cost if status == "ok" else None,
    }


@pytest.fixture(scope="module")
def service(database_url):
    with FakeUpstreamServer(None) as upstream:
        settings = upstream_settings(upstream.url, database_url, ADMIN, reference_model=DEAR)
        with ServiceServer(settings) as server:
            keys = {
                name: httpx.post(
                    f"{server.url}/v1/admin/keys",
                    json={"tenant": name},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                ).json()["key"]
                for name in ("north", "south")
            }

            async def seed():
                ledger = Ledger.connect(to_async_url(database_url))
                north, south = (
                    await ledger.ensure_tenant("north"),
                    await ledger.ensure_tenant("south"),
                )
                rows = [
                    row(1, north, DAY1, CHEAP, 0.001, p_pass=0.85),
                    row(2, north, DAY1, CHEAP, 0.002, p_pass=0.75),
                    row(3, north, DAY2, DEAR, 0.010, router="heuristic"),
                    row(4, north, DAY2, CHEAP, 0.0, status="error"),
                    row(5, south, DAY2, DEAR, 0.020),
                ]
                scores = [("r1", 1.0), ("r2", 0.0), ("r3", 1.0), ("r1", 1.0)]
                async with ledger.engine.begin() as conn:
                    await conn.execute(requests.insert(), rows)
                    await conn.execute(
                        feedback.insert(),
                        [
                            {"request_id": r, "tenant_id": north, "score": s, "created_at": DAY2}
                            for r, s in scores
                        ],
                    )
                await ledger.close()

            asyncio.run(seed())
            yield server, keys


def get(service, key, path, **params):
    return httpx.get(
        f"{service.url}/v1/analytics/{path}",
        params={"start": "2026-03-01", "end": "2026-03-02", **params},
        headers={"Authorization": f"Bearer {key}"},
    )


def test_summary_counts_spend_rates_latency_and_savings(service):
    server, keys = service
    summary = get(server, keys["north"], "summary").json()
    assert (summary["requests"], summary["errors"]) == (4, 1)
    assert summary["error_rate"] == 0.25 and summary["fallback_rate"] == 0
    assert summary["spend_usd"] == pytest.approx(0.013)
    assert summary["latency_ms"]["p50"] == pytest.approx(102.5)
    dear = Catalog.load().get(DEAR)
    reference = 3 * (100 * dear.prompt_usd_per_token + 50 * dear.completion_usd_per_token)
    savings = summary["savings"]
    assert savings["reference_model"] == DEAR and savings["requests"] == 3
    assert savings["reference_cost_usd"] == pytest.approx(reference)
    assert savings["saved_usd"] == pytest.approx(reference - 0.013)
    assert savings["saved_pct"] == pytest.approx((reference - 0.013) / reference)
    everyone = httpx.get(
        f"{server.url}/v1/analytics/summary",
        params={"start": "2026-03-01", "end": "2026-03-02"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ).json()
    assert everyone["requests"] == 5 and everyone["spend_usd"] == pytest.approx(0.033)


def test_spend_buckets_by_time_and_dimension(service):
    server, keys = service
    daily = get(server, keys["north"], "spend", group_by="day").json()["data"]
    assert [(r["bucket"], r["requests"]) for r in daily] == [
        ("2026-03-01T00:00:00Z", 2),
        ("2026-03-02T00:00:00Z", 2),
    ]
    assert daily[0]["spend_usd"] == pytest.approx(0.003)
    hourly = get(server, keys["north"], "spend", group_by="hour", by="model").json()["data"]
    assert ("2026-03-02T15:00:00Z", DEAR) in {(r["bucket"], r["key"]) for r in hourly}
    monthly = get(server, ADMIN, "spend", group_by="month", by="tenant").json()["data"]
    assert {(r["bucket"], r["key"]): r["requests"] for r in monthly} == {
        ("2026-03-01T00:00:00Z", "north"): 4,
        ("2026-03-01T00:00:00Z", "south"): 1,
    }
    routers = get(server, keys["north"], "spend", by="router").json()["data"]
    assert {r["key"] for r in routers} == {"learned", "heuristic"}


def test_mix_quality_and_calibration(service):
    server, keys = service
    mix = get(server, keys["north"], "mix").json()["data"]
    assert [(m["model"], m["requests"]) for m in mix] == [(CHEAP, 2), (DEAR, 1)]
    assert mix[0]["share"] == pytest.approx(2 / 3)
    quality = get(server, keys["north"], "quality").json()
    assert quality["feedback"] == 4
    by_model = {m["model"]: m for m in quality["by_model"]}
    assert by_model[CHEAP]["n"] == 3 and by_model[CHEAP]["mean"] == pytest.approx(2 / 3)
    assert 0 <= by_model[CHEAP]["ci_low"] < 2 / 3 < by_model[CHEAP]["ci_high"] <= 1
    assert by_model[DEAR]["ci_low"] is None  # one rating: no interval
    bins = {b["bin_low"]: b for b in quality["calibration"]}
    assert bins[0.8]["n"] == 2 and bins[0.8]["mean_feedback"] == 1.0
    assert bins[0.7]["mean_p_pass"] == pytest.approx(0.75)
    curve = get(server, keys["north"], "curve").json()["data"]
    assert curve[0]["expected_cost_usd"] < curve[-1]["expected_cost_usd"]


def test_tenants_are_scoped_and_bad_input_is_a_clear_400(service):
    server, keys = service
    assert get(server, keys["south"], "summary").json()["requests"] == 1
    assert get(server, keys["south"], "summary", tenant="north").status_code == 403
    assert get(server, ADMIN, "summary", tenant="north").json()["requests"] == 4
    assert get(server, ADMIN, "summary", tenant="nobody").status_code == 404
    for path, params in (
        ("summary", {"start": "yesterday"}),
        ("summary", {"start": "2026-03-05", "end": "2026-03-01"}),
        ("summary", {"start": "2020-01-01", "end": "2026-01-01"}),
        ("summary", {"reference": "nobody/none"}),
        ("spend", {"group_by": "week"}),
        ("spend", {"by": "colour"}),
    ):
        response = get(server, keys["north"], path, **params)
        assert response.status_code == 400, (path, params)
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{server.url}/v1/analytics/summary").status_code == 401


def test_the_report_command_prints_the_same_numbers(service):
    server, _ = service
    import os

    env = {**os.environ, "SWITCHBOARD_DATABASE_URL": server.settings.database_url}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchboard",
            "report",
            "--start",
            "2026-03-01",
            "--end",
            "2026-03-02",
            "--tenant",
            "north",
            "--reference",
            DEAR,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "requests 4" in result.stdout and "$0.0130" in result.stdout
    assert CHEAP in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "switchboard", "report", "--start", "soon"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "not a date" in bad.stderr
