"""Which models the upstream serves now, and the models a request's routing left out.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "upstream_models",
        sa.Column("model_id", sa.String(200), primary_key=True),
        sa.Column("listed", sa.Boolean, nullable=False),
        sa.Column("listed_at", TIME, nullable=False),
        sa.Column("unavailable_reason", sa.Text, nullable=True),
        sa.Column("unavailable_at", TIME, nullable=True),
    )
    op.add_column("requests", sa.Column("left_out", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("left_out")
    op.drop_table("upstream_models")
