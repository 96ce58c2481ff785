"""The ledger migrations: up from empty to head, down to the first revision and up again, on
SQLite and PostgreSQL, with the rows already stored kept."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from service.config import to_sync_url
from service.migrate import MIGRATIONS, upgrade


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", to_sync_url(url))
    return config


def test_migrations_go_down_and_up_and_keep_the_ledger(database_url):
    upgrade(database_url)
    upgrade(database_url)  # idempotent
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO tenants (name, created_at) VALUES ('kept', :at)"),
            {"at": datetime.now(UTC)},
        )
    command.downgrade(alembic_config(database_url), "0001")
    tables = set(sa.inspect(engine).get_table_names())
    assert "budgets" not in tables and "requests" in tables
    assert "charged_usd" not in {c["name"] for c in sa.inspect(engine).get_columns("requests")}
    upgrade(database_url)
    inspector = sa.inspect(engine)
    assert {"budgets", "budget_windows", "alerts", "spend_breakers"} <= set(
        inspector.get_table_names()
    )
    assert "spend_control" in {c["name"] for c in inspector.get_columns("requests")}
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM tenants WHERE name = 'kept'")) == 1
    engine.dispose()
