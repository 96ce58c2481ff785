"""Experiments: a stop at a maximum sample, a start forced below the tenant minimum (and the
tenants counted then); requests: whether exploration sent the request to a random model.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("max_requests", sa.Integer, nullable=True))
    op.add_column(
        "experiments",
        sa.Column("forced", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("experiments", sa.Column("tenants_at_start", sa.Integer, nullable=True))
    op.add_column("requests", sa.Column("explored", sa.Boolean, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("explored")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("tenants_at_start")
        batch.drop_column("forced")
        batch.drop_column("max_requests")
