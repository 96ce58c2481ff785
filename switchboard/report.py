"""``switchboard report``: the dashboard's numbers in the terminal, from the ledger database."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from switchboard.cli_support import fail


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.6f}" if abs(value) < 0.01 else f"${value:.4f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def report(
    start: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD or ISO time (default: 30 days ago).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD (inclusive) or ISO time (default: now).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="One tenant (default: everyone).")] = None,
    reference: Annotated[str | None, typer.Option(help="Savings against this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Spend, savings, latency, routing mix, quality and budgets over a time range."""
    from service.analytics import Analytics, Scope, default_reference, parse_range
    from service.budgets import BudgetStore
    from service.catalog import Catalog
    from service.config import Settings
    from service.ledger import Ledger, now
    from service.migrate import upgrade

    settings = Settings()
    try:
        span = parse_range(start, end, now())
    except ValueError as error:
        fail(str(error))
        return
    upgrade(settings.database_url)
    catalog = Catalog.load(settings.catalog_path)
    models = json.loads((settings.router_dir / "router.json").read_text())["models"]
    default = settings.reference_model or default_reference(catalog, models)

    async def gather() -> dict[str, Any]:
        ledger = Ledger.connect(settings.async_database_url)
        try:
            analytics = Analytics(ledger.engine, catalog, default)
            scope = Scope(None)
            if tenant is not None:
                tenant_id = await analytics.tenant_id(tenant)
                if tenant_id is None:
                    raise ValueError(f"no tenant {tenant!r}")
                scope = Scope(tenant_id)
            store = BudgetStore(ledger.engine)
            shown = [
                b for b in await store.all() if tenant is None or b.scope == f"tenant:{tenant}"
            ]
            return {
                "summary": await analytics.summary(scope, span, reference),
                "spend_by_day": await analytics.spend(scope, span, "day", "none"),
                "mix": await analytics.mix(scope, span),
                "quality": await analytics.quality(scope, span),
                "budgets": await analytics.budgets(store, shown),
            }
        finally:
            await ledger.close()

    try:
        data = asyncio.run(gather())
    except ValueError as error:
        fail(str(error))
        return
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    _print(data, tenant)


def _print(data: dict[str, Any], tenant: str | None) -> None:
    s = data["summary"]
    saving = s["savings"]
    typer.echo(f"{s['range']['start'][:19]} to {s['range']['end'][:19]}, {tenant or 'all tenants'}")
    lines = [
        ("requests", str(s["requests"])),
        ("errors", f"{s['errors']} ({_pct(s['error_rate'])})"),
        ("fallback rate", _pct(s["fallback_rate"])),
        ("spend", _usd(s["spend_usd"])),
        (
            f"saved vs {saving['reference_model']}",
            f"{_usd(saving['saved_usd'])} ({_pct(saving['saved_pct'])})",
        ),
        (
            "latency p50/p95/p99 ms",
            " / ".join(f"{v:.1f}" if v is not None else "-" for v in s["latency_ms"].values()),
        ),
    ]
    for name, value in lines:
        typer.echo(f"  {name} {value}")
    typer.echo("\nspend per day")
    for row in data["spend_by_day"]:
        typer.echo(
            f"  {row['bucket'][:10]}  {row['requests']:6d} requests  {_usd(row['spend_usd'])}"
        )
    typer.echo("\nrouting mix")
    for row in data["mix"]:
        typer.echo(
            f"  {row['model'][:40]:40s} {row['router']:10s} {row['requests']:6d} "
            f"{_pct(row['share']):>8s} {_usd(row['spend_usd'])}"
        )
    typer.echo("\nfeedback by model (mean, 95 % interval)")
    for row in data["quality"]["by_model"]:
        interval = "-" if row["ci_low"] is None else f"{row['ci_low']:.3f} to {row['ci_high']:.3f}"
        typer.echo(f"  {row['model'][:40]:40s} n={row['n']:<5d} {row['mean']:.3f}  {interval}")
    typer.echo("\nbudgets")
    for row in data["budgets"]:
        typer.echo(
            f"  {row['scope']:30s} {row['period']:6s} {_usd(row['spent_usd'])} of "
            f"{_usd(row['limit_usd'])}, projected {_usd(row['projected_end_usd'])}, "
            f"{row['alerts_sent']} alerts"
        )
