"""``switchboard keys create | list | revoke``: tenants' API keys, straight in the ledger."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from switchboard.cli_support import fail, with_ledger

keys_app = typer.Typer(help="Tenants' API keys.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (created if new).")],
) -> None:
    """Create an API key for a tenant; the key alone is printed on the last line."""
    from service.ledger import tenant_name

    try:
        name = tenant_name(tenant)
    except ValueError as error:
        fail(f"--tenant: {error}")
    key, key_id = with_ledger(lambda ledger: ledger.create_key(name))
    typer.echo(
        f"created key {key_id} for tenant {name!r} (budget scope key:{key_id}); it is shown once:",
        err=True,
    )
    typer.echo(key)


def _row(key: dict[str, Any]) -> dict[str, Any]:
    return {
        **key,
        "created_at": key["created_at"].isoformat(),
        "revoked_at": key["revoked_at"].isoformat() if key["revoked_at"] else None,
    }


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every key: id, tenant, prefix, created_at, revoked_at (never the key itself)."""
    rows = [_row(k) for k in with_ledger(lambda ledger: ledger.list_keys())]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    typer.echo(f"{'id':>5}  {'tenant':<24} {'prefix':<12} {'created_at':<26} revoked_at")
    for row in rows:
        typer.echo(
            f"{row['id']:>5}  {row['tenant']:<24} {row['prefix']:<12} "
            f"{row['created_at']:<26} {row['revoked_at'] or '-'}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_or_id: Annotated[str, typer.Argument(help="The key `keys create` printed, or its id.")],
) -> None:
    """Revoke a key: every running replica refuses it within about a second."""
    which: str | int = int(key_or_id) if key_or_id.isdigit() else key_or_id.strip()
    if isinstance(which, int) and not 1 <= which <= 2**31 - 1:
        fail(f"no API key {key_or_id}")
    row = with_ledger(lambda ledger: ledger.revoke_key(which))
    if row is None:
        fail("no such API key (give the key that `keys create` printed, or its id)")
    row = _row(row)
    typer.echo(f"revoked key {row['id']} of tenant {row['tenant']!r} at {row['revoked_at']}")
