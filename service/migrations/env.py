"""Alembic environment: run the migrations on the configured database, one process at a time."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from service.tables import metadata

ADVISORY_LOCK_ID = 7_240_511  # serializes replicas migrating one PostgreSQL database

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url must be set"
engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(sa.text(f"SELECT pg_advisory_lock({ADVISORY_LOCK_ID})"))
        connection.commit()
    try:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if postgres:
            connection.execute(sa.text(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_ID})"))
            connection.commit()
engine.dispose()
