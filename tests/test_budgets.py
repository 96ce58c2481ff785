"""Budgets: periods, scopes, cost bounds, and reservations that hold under concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from service.budget_leases import LEASE_HOLDS, LEASE_SHARE, BudgetLeases, Hold
from service.budgets import (
    EPOCH,
    BudgetExceeded,
    BudgetStore,
    parse_scope,
    period_window,
)
from service.catalog import ModelInfo, parse_openrouter_models
from service.config import Settings, to_async_url
from service.costs import (
    bound_output,
    budget_charge,
    output_token_bound,
    prompt_token_bound,
    worst_case_cost,
)
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
    limited = {**body, "max_tokens": 10}
    cost = worst_case_cost(info, limited, settings)
    assert cost == pytest.approx(prompt_token_bound(limited) * 1e-6 + 10 * 2e-6)


@pytest.mark.parametrize(
    ("limits", "bound"),
    [
        ({"max_completion_tokens": 1, "max_tokens": 4000}, 4000),  # served under either field
        ({"max_completion_tokens": 4000, "max_tokens": 1}, 4000),
        ({"max_tokens": 100, "reasoning": {"max_tokens": 50}}, 150),
        ({"max_tokens": 100, "n": 3}, 300),
        ({"max_tokens": True}, 8192),  # not a count: as if no limit (the edge refuses it)
        ({}, 8192),  # no limit reached the hold: the model's longest answer
    ],
)
def test_the_output_bound_covers_every_limit_an_upstream_may_honour(limits, bound):
    settings = Settings(budget_max_output_tokens=300)
    info = ModelInfo("m", "m", 1e-6, 2e-6, max_output_tokens=8192)
    assert output_token_bound({"messages": [], **limits}, settings, info) == bound


def test_the_prompt_bound_counts_every_field_the_body_forwards():
    body = {"messages": [{"role": "user", "content": "hi"}]}
    extra = {**body, "prediction": {"type": "content", "content": "x" * 5000}}
    assert prompt_token_bound(extra) >= prompt_token_bound(body) + 5000
    named = {**body, "metadata": {"note": "y" * 3000}}
    assert prompt_token_bound(named) >= prompt_token_bound(body) + 3000


def test_the_worst_case_takes_every_price_tier_at_its_peak():
    listing = {
        "data": [
            {
                "id": "p/tiered",
                "context_length": 1_000_000,
                "top_provider": {"max_completion_tokens": 64_000},
                "pricing": {
                    "prompt": "0.000003",
                    "completion": "0.000015",
                    "input_cache_write_1h": "0.000006",
                    "image": "0.001",
                    "overrides": [{"min_prompt_tokens": 200000, "completion": "0.0000225"}],
                },
            }
        ]
    }
    info = parse_openrouter_models(listing, "2026-08-19")["p/tiered"]
    assert info.peak_prompt_usd_per_token == 6e-6 and info.peak_completion_usd_per_token == 2.25e-5
    assert info.max_output_tokens == 64_000 and info.image_usd == 0.001
    assert info.worst_case_usd(1000, 100, media_parts=2) == pytest.approx(
        1000 * 6e-6 + 100 * 2.25e-5 + 2 * 0.001
    )
    assert info.cost_usd(1000, 100) == pytest.approx(1000 * 3e-6 + 100 * 1.5e-5)


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


def leases(store: BudgetStore) -> BudgetLeases:
    """One process's lease book (request timeout 60 s, upkeep every 30 s)."""
    return BudgetLeases(store.engine, request_timeout_s=60, upkeep_interval_s=30)


async def settle(book: BudgetLeases, *charges: tuple[Hold, float]) -> list:
    async with book.engine.begin() as conn:
        settlement = await book.settle(conn, list(charges))
    book.settled(settlement)
    return settlement.windows


async def lease_rows(store: BudgetStore) -> list:
    async with store.engine.connect() as conn:
        return (await conn.execute(budget_reservations.select())).all()


def test_holds_settle_release_and_give_back_keep_the_window_true(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 1.0)
        assert budget.applies(ACME, "x/y") and not budget.applies(Principal(2, "globex", 8), None)
        book = leases(store)
        hold = await book.hold([budget], 0.4)  # near the limit: the lease is exactly the hold
        window = await store.window(budget)
        assert (window.spent_usd, window.reserved_usd) == (0.0, pytest.approx(0.4))
        charged = await settle(book, (hold, 0.25))
        assert charged[0].spent_usd == pytest.approx(0.25)
        assert charged[0].reserved_usd == pytest.approx(0.15)  # the lease keeps the rest
        failed = await book.hold([budget], 0.5)
        book.release(failed)
        window = await store.window(budget)
        assert window.spent_usd == pytest.approx(0.25) and window.requests == 1
        assert window.reserved_usd == pytest.approx(0.5)  # 0.15 left over + 0.35 grown
        await book.tidy()  # used since the last upkeep: kept, renewed
        assert (await store.window(budget)).reserved_usd == pytest.approx(0.5)
        await book.tidy()  # idle for an interval: its room goes back, its row goes
        window = await store.window(budget)
        assert window.spent_usd == pytest.approx(0.25) and window.reserved_usd == pytest.approx(0)
        assert await lease_rows(store) == []

    run(scenario())


def test_a_lease_serves_many_holds_from_few_grants(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 100.0, period="month")
        book = leases(store)
        grows = []

        def count(conn, cursor, statement, *args):
            if statement.startswith("UPDATE budget_windows"):
                grows.append(statement)

        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", count)
        try:
            holds = [await book.hold([budget], 0.01) for _ in range(100)]
            await book.wait_for_growth()
        finally:
            sa.event.remove(store.engine.sync_engine, "before_cursor_execute", count)
        # room for 32 holds, then refills ahead of need by twice what is in flight
        assert 1 < len(grows) <= 4
        rows = await lease_rows(store)
        window = await store.window(budget)
        assert len(rows) == 1 and rows[0].amount_usd >= 100 * 0.01
        assert window.reserved_usd == pytest.approx(rows[0].amount_usd)
        await settle(book, *[(hold, 0.004) for hold in holds[:LEASE_HOLDS]])
        window = await store.window(budget)
        assert window.spent_usd == pytest.approx(LEASE_HOLDS * 0.004)
        assert window.requests == LEASE_HOLDS
        assert window.reserved_usd == pytest.approx(rows[0].amount_usd - LEASE_HOLDS * 0.004)
        await book.tidy(everything=True)  # shutdown: only the holds in flight stay reserved
        window = await store.window(budget)
        assert window.reserved_usd == pytest.approx((100 - LEASE_HOLDS) * 0.01)
        assert [row.amount_usd for row in await lease_rows(store)] == [
            pytest.approx((100 - LEASE_HOLDS) * 0.01)
        ]
        await store.delete(budget.id)

    run(scenario())


def test_a_lease_takes_at_most_a_share_of_the_remaining_room(store):
    async def scenario():
        budget = await _fresh(store, "global", 1.0)
        book = leases(store)
        await book.hold([budget], 0.01)  # room for 32 would be 0.32
        assert (await store.window(budget)).reserved_usd == pytest.approx(LEASE_SHARE * 1.0)
        # 0.04 left is below a quarter of 32 holds: a refill takes a share of what remains
        await book.wait_for_growth()
        reserved = (await store.window(budget)).reserved_usd
        assert reserved == pytest.approx(LEASE_SHARE + LEASE_SHARE * (1 - LEASE_SHARE))
        await book.tidy(everything=True)

    run(scenario())


def test_a_hold_that_does_not_fit_is_refused_whole_with_the_numbers(store):
    async def scenario():
        small = await _fresh(store, "key:7", 0.1)
        large = await _fresh(store, "global", 10.0)
        with pytest.raises(BudgetExceeded) as refused:
            await leases(store).hold([large, small], 0.2)
        error = refused.value
        assert error.status == 402 and error.code == "budget_exceeded"
        assert "key:7" in error.message and "limit $0.100000" in error.message
        assert "may cost up to $0.200000" in error.message
        assert error.headers["x-switchboard-budget-scope"] == "key:7"
        assert "x-switchboard-budget-resets-at" in error.headers
        # all or nothing: the global budget holds nothing either
        assert (await store.window(large)).reserved_usd == 0

    run(scenario())


def test_concurrent_holds_in_two_processes_never_exceed_the_limit(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 1.0, period="total")
        books = [leases(store), leases(store)]

        async def one(i: int) -> bool:
            try:
                await books[i % 2].hold([budget], 0.15)
                return True
            except BudgetExceeded:
                return False

        granted = await asyncio.gather(*(one(i) for i in range(40)))
        window = await store.window(budget)
        assert sum(granted) == 6  # floor(1.0 / 0.15): near the limit leases are single holds
        assert window.reserved_usd == pytest.approx(0.9) and window.resets_at is None
        await store.delete(budget.id)

    run(scenario())


def test_expired_leases_are_swept_back_and_their_process_starts_a_new_one(store):
    async def scenario():
        budget = await _fresh(store, "model:x/y", 1.0)
        book = leases(store)
        in_flight = await book.hold([budget], 0.3)
        await book.wait_for_growth()
        async with store.engine.begin() as conn:
            await conn.execute(
                budget_reservations.update().values(expires_at=datetime(2000, 1, 1, tzinfo=UTC))
            )
        assert await store.sweep() == 1
        assert (await store.window(budget)).reserved_usd == pytest.approx(0)
        assert await lease_rows(store) == []
        # the call in flight still counts as spend; its lease is gone, so nothing is unreserved
        await settle(book, (in_flight, 0.1))
        window = await store.window(budget)
        assert (window.spent_usd, window.reserved_usd) == (pytest.approx(0.1), pytest.approx(0))
        await book.hold([budget], 0.3)  # needs room: the lost lease is replaced
        rows = await lease_rows(store)
        assert len(rows) == 1 and rows[0].amount_usd == pytest.approx(0.3)
        assert (await store.window(budget)).reserved_usd == pytest.approx(0.3)
        await book.tidy(everything=True)

    run(scenario())


def test_a_changed_limit_takes_effect_on_the_next_hold(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 10.0)
        book = leases(store)
        await book.hold([budget], 0.1)  # a lease of 0.5 (a share of 10)
        lowered = await store.put("tenant:acme", "day", 0.55)
        with pytest.raises(BudgetExceeded):  # the old lease's room is not used under the new limit
            await book.hold([lowered], 0.1)
        await book.tidy()  # the retired lease gives back its free room
        assert (await store.window(lowered)).reserved_usd == pytest.approx(0.1)
        await book.hold([lowered], 0.1)
        await book.tidy(everything=True)

    run(scenario())


def test_setting_a_budget_again_keeps_its_spend(store):
    async def scenario():
        budget = await _fresh(store, "tenant:acme", 1.0, period="month")
        book = leases(store)
        await settle(book, (await book.hold([budget], 0.2), 0.2))
        again = await store.put("tenant:acme", "month", 5.0, (0.9,))
        assert again.id == budget.id and again.alert_at == (0.9,)
        window = await store.window(again)
        assert window.spent_usd == pytest.approx(0.2) and window.budget.limit_usd == 5.0
        with pytest.raises(ValueError):
            await store.put("tenant:acme", "year", 5.0)

    run(scenario())
