"""Experiments (A/B arms between routers) and the source of each feedback score.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("arms", sa.JSON, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("margin", sa.Float(precision=53), nullable=False),
        sa.Column("min_feedback", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("stopped_at", TIME, nullable=True),
        sa.Column("stop_reason", sa.Text, nullable=True),
    )
    op.add_column(
        "feedback", sa.Column("source", sa.String(16), nullable=False, server_default="user")
    )


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("source")
    op.drop_table("experiments")
