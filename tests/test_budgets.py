"""Budgets: periods, scopes, cost bounds, and reservations that hold under concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from service.budgets import (
    EPOCH,
    BudgetExceeded,
    BudgetStore,
    parse_scope,
    period_window,
)
from service.catalog import ModelInfo
from service.config import Settings, to_async_url
from service.costs import bound_output, budget_charge, prompt_token_bound, worst_case_cost
from service.ledger import Ledger, Principal
from service.migrate import upgrade
from service.tables import budget_reservations

AT = datetime(2026, 12, 31, 18, 30, tzinfo=UTC)  # a Thursday


def test_periods_are_calendar_windows_in_utc():
    assert period_window("day", AT) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_window("week", AT) == (
        datetime(2026, 12, 28, tzinfo=UTC),
        datetime(2027, 1, 4, tzinfo=UTC),
    )
    assert period_window("month", AT) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_window("month", datetime(2027, 2, 10, tzinfo=UTC))[1] == datetime(
        2027, 3, 1, tzinfo=UTC
    )
    assert period_window("total", AT) == (EPOCH, None)
    with pytest.raises(ValueError):
        period_window("fortnight", AT)


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("global", "global"),
        (" tenant:acme ", "tenant:acme"),
        ("key:12", "key:12"),
        ("model:openai/gpt-4o", "model:openai/gpt-4o"),
    ],
)
def test_scopes_parse(text, scope):
    assert parse_scope(text) == scope


@pytest.mark.parametrize("text", ["", "tenant:", "team:x", "key:abc", "everyone"])
def test_bad_scopes_are_refused(text):
    with pytest.raises(ValueError):
        parse_scope(text)


def test_the_prompt_bound_counts_bytes_template_tokens_and_media():
    text = "héllo wörld " * 10
    body = {"messages": [{"role": "user", "content": text}]}
    assert prompt_token_bound(body) >= len(text.encode())
    with_image = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 10**6},
                    },
                ],
            }
        ]
    }
    assert 2_000 <= prompt_token_bound(with_image) < 3_000  # an image is not its base64 length
    tools = {**body, "tools": [{"type": "function", "function": {"name": "x" * 500}}]}
    assert prompt_token_bound(tools) > prompt_token_bound(body) + 500


def test_the_output_bound_is_the_callers_limit_or_the_one_switchboard_sets():
    settings = Settings(budget_max_output_tokens=300)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert bound_output(body, settings)["max_tokens"] == 300
    assert bound_output({**body, "max_tokens": 7}, settings)["max_tokens"] == 7
    assert "max_tokens" not in bound_output({**body, "max_completion_tokens": 9}, settings)
    info = ModelInfo("m", "m", 1e-6, 2e-6)
    cost = worst_case_cost(info, {**body, "max_tokens": 10}, settings)
    assert cost == pytest.approx(prompt_token_bound(body) * 1e-6 + 10 * 2e-6)


def test_unpriced_models_are_blocked_or_charged_a_fallback_price():
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    unpriced = ModelInfo("u", "u", None, None)
    with pytest.raises(LookupError):
        worst_case_cost(unpriced, body, Settings(unpriced_policy="block"))
    fallback = Settings(
        unpriced_policy="fallback",
        unpriced_prompt_usd_per_token=1e-6,
        unpriced_completion_usd_per_token=1e-5,
    )
    assert worst_case_cost(unpriced, body, fallback) > 0
    assert budget_charge(None, 100, 10, fallback) == pytest.approx(100e-6 + 10e-5)
    assert budget_charge(None, 100, 10, Settings(unpriced_policy="block")) == 0.0
    assert budget_charge(0.5, 100, 10, fallback) == 0.5


@pytest.fixture
def store(database_url):
    upgrade(database_url)
    ledger = Ledger.connect(to_async_url(database_url))
    yield BudgetStore(ledger.engine, refresh_s=0)
    asyncio.run(ledger.close())


def run(coroutine):
    return asyncio.run(coroutine)


ACME = Principal(1, "acme", 7)


async def _fresh(store: BudgetStore, scope: str, limit: float, period: str = "day"):
    for budget in await store.find(scope):
        await store.delete(budget.id)
    return await store.put(scope, period, limit)


def test_reserve_settle_and_release_keep_the_window_true(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 1.0)
        assert budget.applies(ACME, "x/y") and not budget.applies(Principal(2, "globex", 8), None)
        hold = await store.reserve([budget], 0.4, "r1", ttl_s=60)
        window = await store.window(budget)
        assert (window.spent_usd, window.reserved_usd) == (0.0, pytest.approx(0.4))
        async with store.engine.begin() as conn:
            charged = await store.settle(conn, hold, 0.25)
        assert charged[0].spent_usd == pytest.approx(0.25) and charged[0].reserved_usd == 0
        failed = await store.reserve([budget], 0.5, "r2", ttl_s=60)
        await store.release(failed)
        window = await store.window(budget)
        assert window.spent_usd == pytest.approx(0.25) and window.reserved_usd == pytest.approx(0)
        assert window.requests == 1

    run(scenario())


def test_a_hold_that_does_not_fit_is_refused_whole_with_the_numbers(store):
    async def scenario():
        small = await _fresh(store, "key:7", 0.1)
        large = await _fresh(store, "global", 10.0)
        with pytest.raises(BudgetExceeded) as refused:
            await store.reserve([large, small], 0.2, "r3", ttl_s=60)
        error = refused.value
        assert error.status == 402 and error.code == "budget_exceeded"
        assert "key:7" in error.message and "limit $0.100000" in error.message
        assert error.headers["x-switchboard-budget-scope"] == "key:7"
        assert "x-switchboard-budget-resets-at" in error.headers
        # all or nothing: the global budget holds nothing either
        assert (await store.window(large)).reserved_usd == 0

    run(scenario())


def test_concurrent_holds_never_exceed_the_limit(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 1.0, period="total")

        async def one(i: int) -> bool:
            try:
                await store.reserve([budget], 0.15, f"c{i}", ttl_s=60)
                return True
            except BudgetExceeded:
                return False

        granted = await asyncio.gather(*(one(i) for i in range(40)))
        window = await store.window(budget)
        assert sum(granted) == 6  # floor(1.0 / 0.15)
        assert window.reserved_usd == pytest.approx(0.9) and window.resets_at is None

    run(scenario())


def test_expired_holds_are_swept_back(store):
    async def scenario():
        budget = await _fresh(store, "model:x/y", 1.0)
        await store.reserve([budget], 0.3, "dead", ttl_s=60)
        async with store.engine.begin() as conn:
            await conn.execute(
                budget_reservations.update().values(expires_at=datetime(2000, 1, 1, tzinfo=UTC))
            )
        assert await store.sweep() >= 1
        assert (await store.window(budget)).reserved_usd == pytest.approx(0)
        async with store.engine.connect() as conn:
            left = await conn.scalar(sa.select(sa.func.count()).select_from(budget_reservations))
        assert left == 0

    run(scenario())


def test_setting_a_budget_again_keeps_its_spend(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 1.0, period="month")
        hold = await store.reserve([budget], 0.2, "k1", ttl_s=60)
        async with store.engine.begin() as conn:
            await store.settle(conn, hold, 0.2)
        again = await store.put("tenant:acme", "month", 5.0, (0.9,))
        assert again.id == budget.id and again.alert_at == (0.9,)
        window = await store.window(again)
        assert window.spent_usd == pytest.approx(0.2) and window.budget.limit_usd == 5.0
        with pytest.raises(ValueError):
            await store.put("tenant:acme", "year", 5.0)

    run(scenario())
