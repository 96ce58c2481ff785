"""The LLM judge's own calls tagged on the ledger, and its verdict on each answer it asked about.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("purpose", sa.String(16), nullable=True))
    op.create_table(
        "judge_verdicts",
        sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.id"), primary_key=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(precision=53), nullable=True),
        sa.Column("judge_model", sa.String(200), nullable=False),
        sa.Column("judge_request_id", sa.String(64), nullable=True),
        sa.Column("reply", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("judge_verdicts")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("purpose")
