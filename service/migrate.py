"""Upgrade the ledger schema to the newest migration (Alembic, run programmatically)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service.config import to_sync_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def upgrade(database_url: str) -> None:
    """Bring the database at ``database_url`` to the head revision; safe to run concurrently."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", to_sync_url(database_url))
    command.upgrade(config, "head")
