"""``switchboard budget ...``, ``switchboard breaker ...`` and ``switchboard reconcile``: spend
controls from the terminal, on the database of ``SWITCHBOARD_DATABASE_URL``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from switchboard.cli_support import fail, with_ledger

if TYPE_CHECKING:
    from service.budgets import BudgetStore
    from service.ledger import Ledger

T = TypeVar("T")
budget_app = typer.Typer(help="Spend budgets: hard caps, alerts, soft landing, pacing.")
breaker_app = typer.Typer(help="Spend-spike breakers.", no_args_is_help=True)


def on_ledger(work: Callable[[Ledger, BudgetStore], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database (migrated first)."""
    from service.budgets import BudgetStore

    return with_ledger(lambda ledger: work(ledger, BudgetStore(ledger.engine)))


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail("--alert-at takes fractions of the limit, such as 0.5,0.8,1.0")
        raise


@budget_app.command("set")
def budget_set(
    scope: Annotated[str, typer.Option(help="global, tenant:NAME, key:ID or model:ID.")],
    period: Annotated[str, typer.Option(help="day, week, month (calendar, UTC) or total.")],
    limit_usd: Annotated[float, typer.Option(help="Hard cap in USD for the period.")],
    alert_at: Annotated[str, typer.Option(help="Alert at these fractions.")] = "0.5,0.8,1.0",
    webhook: Annotated[str | None, typer.Option(help="POST alerts to this URL.")] = None,
    email: Annotated[str | None, typer.Option(help="Mail alerts here (comma-separated).")] = None,
    soft_landing_at: Annotated[
        float | None,
        typer.Option(help="Below this remaining fraction, route cheaper instead of refusing."),
    ] = None,
    soft_threshold: Annotated[
        float | None, typer.Option(help="The P(pass) threshold while landing softly.")
    ] = None,
    pacing: Annotated[
        bool, typer.Option(help="Adjust the routing threshold to land on the budget.")
    ] = False,
) -> None:
    """Create or update the budget of a scope and period (its spend so far is kept)."""
    from service.alerts import WebhookRefused, check_webhook_url
    from service.config import Settings

    if (soft_landing_at is None) != (soft_threshold is None):
        fail("--soft-landing-at and --soft-threshold go together")
    if soft_landing_at is not None and not 0 < soft_landing_at < 1:
        fail("--soft-landing-at is a fraction between 0 and 1")
    if soft_threshold is not None and not 0 <= soft_threshold <= 1:
        fail("--soft-threshold is a probability between 0 and 1")
    try:
        if webhook:
            check_webhook_url(webhook, Settings().allow_private_webhooks)
        fractions = _fractions(alert_at)
        status = on_ledger(
            lambda ledger, store: _put(
                store,
                scope,
                period,
                limit_usd,
                fractions,
                webhook,
                email,
                soft_landing_at,
                soft_threshold,
                pacing,
            )
        )
    except (ValueError, WebhookRefused) as error:
        fail(str(error))
        return
    typer.echo(json.dumps(status, indent=1))


async def _put(store: BudgetStore, *args: Any) -> dict[str, Any]:
    budget = await store.put(*args)
    return (await store.window(budget)).status()


@budget_app.command("show")
def budget_show(
    scope: Annotated[str, typer.Option(help="global, tenant:NAME, key:ID or model:ID.")],
    period: Annotated[str | None, typer.Option(help="Which period, if it has several.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A budget's limit, spend, holds and reset time."""

    async def show(ledger: Ledger, store: BudgetStore) -> list[dict[str, Any]]:
        return [(await store.window(b)).status() for b in await store.find(scope, period)]

    try:
        found = on_ledger(show)
    except ValueError as error:
        fail(str(error))
        return
    if not found:
        fail(f"no budget for {scope}" + (f" ({period})" if period else ""))
    if len(found) > 1:
        periods = ", ".join(s["period"] for s in found)
        fail(f"{scope} has budgets for several periods ({periods}): choose one with --period")
    status = found[0]
    if as_json:
        typer.echo(json.dumps(status))
        return
    for name in ("scope", "period", "limit_usd", "spent_usd", "reserved_usd", "resets_at"):
        typer.echo(f"{name:14s} {status[name]}")


@budget_app.command("list")
def budget_list() -> None:
    """Every budget with its current spend."""

    async def everything(ledger: Ledger, store: BudgetStore) -> list[dict[str, Any]]:
        return [(await store.window(b)).status() for b in await store.all()]

    rows = on_ledger(everything)
    typer.echo(f"{'id':>4s} {'scope':30s} {'period':6s} {'limit $':>10s} {'spent $':>10s} resets")
    for r in rows:
        typer.echo(
            f"{r['id']:4d} {r['scope'][:30]:30s} {r['period']:6s} {r['limit_usd']:10.4f} "
            f"{r['spent_usd']:10.4f} {r['resets_at'] or '-'}"
        )


@budget_app.command("delete")
def budget_delete(budget_id: Annotated[int, typer.Argument(help="The budget's id.")]) -> None:
    """Delete a budget and its spend history."""
    if not on_ledger(lambda ledger, store: store.delete(budget_id)):
        fail(f"no budget {budget_id}")
    typer.echo(f"deleted budget {budget_id}")


@breaker_app.command("reset")
def breaker_reset(
    scope: Annotated[str, typer.Option(help="global or tenant:NAME.")],
) -> None:
    """Close a tripped spend breaker now, instead of waiting for it to cool down."""

    from service.spend_breaker import reset_breaker

    if not on_ledger(lambda ledger, store: reset_breaker(ledger.engine, scope)):
        fail(f"no open spend breaker for {scope}")
    typer.echo(f"closed the spend breaker for {scope}")


def reconcile(
    days: Annotated[float, typer.Option(help="Look at this many days back.")] = 30.0,
    tolerance: Annotated[
        float | None, typer.Option(help="Flag differences above this fraction (default 0.01).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests whose provider-reported cost differs from the catalog price by more than the
    tolerance."""
    from service.config import Settings
    from service.ledger import now

    limit = tolerance if tolerance is not None else Settings().reconcile_tolerance
    if days <= 0 or limit < 0:
        fail("--days must be positive and --tolerance non-negative")
    since = now() - timedelta(days=days)
    rows = on_ledger(lambda ledger, store: ledger.cost_mismatches(since, limit))
    if as_json:
        for row in rows:
            row["created_at"] = row["created_at"].isoformat()
        typer.echo(json.dumps(rows, indent=1))
        return
    typer.echo(f"{len(rows)} request(s) in the last {days:g} days differ by more than {limit:.1%}")
    if rows:
        typer.echo(
            f"{'request':38s} {'model':34s} {'upstream $':>12s} {'catalog $':>12s} {'diff':>7s}"
        )
    for row in rows:
        upstream, catalog = row["upstream_cost_usd"], row["catalog_cost_usd"]
        diff = (catalog - upstream) / upstream if upstream else float("inf")
        typer.echo(
            f"{row['id']:38s} {(row['served_model'] or '-')[:34]:34s} {upstream:12.8f} "
            f"{catalog:12.8f} {diff:+7.1%}"
        )
