"""What every subcommand shares: one-line errors, and work run against the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from service.ledger import Ledger

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit 2: bad input never ends in a traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def with_ledger(work: Callable[[Ledger], Awaitable[T]]) -> T:
    """Run ``work(ledger)`` against SWITCHBOARD_DATABASE_URL (migrated first)."""
    from service.config import Settings
    from service.ledger import Ledger
    from service.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url)

    async def run() -> T:
        ledger = Ledger.connect(settings.async_database_url)
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(run())
