"""Budgets, their period windows and reservations, alerts, spend breakers; budget charges on
requests.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
DOUBLE = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("limit_usd", DOUBLE, nullable=False),
        sa.Column("alert_at", sa.JSON, nullable=False),
        sa.Column("webhook_url", sa.Text, nullable=True),
        sa.Column("email", sa.Text, nullable=True),
        sa.Column("soft_landing_at", DOUBLE, nullable=True),
        sa.Column("soft_threshold", DOUBLE, nullable=True),
        sa.Column("pacing", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("pacing_state", sa.JSON, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.UniqueConstraint("scope", "period", name="uq_budgets_scope_period"),
    )
    op.create_table(
        "budget_windows",
        sa.Column("budget_id", sa.Integer, sa.ForeignKey("budgets.id", ondelete="CASCADE")),
        sa.Column("period_start", TIME),
        sa.Column("spent_usd", DOUBLE, nullable=False, server_default="0"),
        sa.Column("reserved_usd", DOUBLE, nullable=False, server_default="0"),
        sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("budget_id", "period_start"),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(120), primary_key=True),
        sa.Column("budget_id", sa.Integer, nullable=False),
        sa.Column("period_start", TIME, nullable=False),
        sa.Column("amount_usd", DOUBLE, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
    )
    op.create_index("ix_budget_reservations_expires_at", "budget_reservations", ["expires_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("budget_id", sa.Integer, nullable=True),
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("webhook_status", sa.String(200), nullable=True),
        sa.Column("email_status", sa.String(200), nullable=True),
    )
    op.create_index("ix_alerts_budget_id", "alerts", ["budget_id"])
    op.create_table(
        "spend_breakers",
        sa.Column("scope", sa.String(300), primary_key=True),
        sa.Column("tripped_at", TIME, nullable=False),
        sa.Column("open_until", TIME, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.add_column("requests", sa.Column("reserved_usd", DOUBLE, nullable=True))
    op.add_column("requests", sa.Column("charged_usd", DOUBLE, nullable=True))
    op.add_column("requests", sa.Column("spend_control", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:  # SQLite rebuilds the table
        batch.drop_column("spend_control")
        batch.drop_column("charged_usd")
        batch.drop_column("reserved_usd")
    for table in ("spend_breakers", "alerts", "budget_reservations", "budget_windows", "budgets"):
        op.drop_table(table)
