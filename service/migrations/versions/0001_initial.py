"""The initial ledger: tenants, API keys, requests, feedback.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
DOUBLE = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
    )
    op.create_table(
        "requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("api_key_id", sa.Integer, nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=True),
        sa.Column("router", sa.String(64), nullable=True),
        sa.Column("router_version", sa.String(64), nullable=True),
        sa.Column("arm", sa.String(64), nullable=True),
        sa.Column("threshold", DOUBLE, nullable=True),
        sa.Column("candidates", sa.JSON, nullable=True),
        sa.Column("propensity", DOUBLE, nullable=True),
        sa.Column("chosen_model", sa.String(200), nullable=True),
        sa.Column("served_model", sa.String(200), nullable=True),
        sa.Column("fallbacks", sa.JSON, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("cost_usd", DOUBLE, nullable=True),
        sa.Column("catalog_cost_usd", DOUBLE, nullable=True),
        sa.Column("upstream_cost_usd", DOUBLE, nullable=True),
        sa.Column("latency_ms", DOUBLE, nullable=False),
        sa.Column("upstream_ms", DOUBLE, nullable=True),
        sa.Column("overhead_ms", DOUBLE, nullable=True),
        sa.Column("first_byte_ms", DOUBLE, nullable=True),
        sa.Column("end_user", sa.String(200), nullable=True),
        sa.Column("prompt", sa.Text, nullable=True),
        sa.Column("response", sa.Text, nullable=True),
    )
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    op.create_index("ix_requests_tenant_id", "requests", ["tenant_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.id"), nullable=False),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("score", DOUBLE, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("requests")
    op.drop_table("api_keys")
    op.drop_table("tenants")
