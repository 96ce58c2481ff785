"""Every table of the ledger database, in SQLAlchemy Core (the migrations create them).

Money is in USD as double precision; times are timezone-aware UTC.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
UTC_TIME = sa.DateTime(timezone=True)
DOUBLE = sa.Float(precision=53)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", UTC_TIME, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("revoked_at", UTC_TIME, nullable=True),
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", UTC_TIME, nullable=False, index=True),
    sa.Column("tenant_id", sa.Integer, nullable=False, index=True),
    sa.Column("api_key_id", sa.Integer, nullable=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("requested_model", sa.String(200), nullable=True),
    sa.Column("router", sa.String(64), nullable=True),
    sa.Column("router_version", sa.String(64), nullable=True),
    sa.Column("arm", sa.String(64), nullable=True),
    sa.Column("threshold", DOUBLE, nullable=True),  # the threshold rule's; null otherwise
    sa.Column("answer_value_usd", DOUBLE, nullable=True),  # the value rule's; null otherwise
    sa.Column("candidates", sa.JSON, nullable=True),
    sa.Column("propensity", DOUBLE, nullable=True),
    sa.Column("chosen_model", sa.String(200), nullable=True),
    sa.Column("served_model", sa.String(200), nullable=True),
    sa.Column("fallbacks", sa.JSON, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("stream", sa.Boolean, nullable=False, default=False),
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
    sa.Column("reserved_usd", DOUBLE, nullable=True),  # budget hold of the served attempt
    sa.Column("charged_usd", DOUBLE, nullable=True),  # what budgets were charged
    sa.Column("spend_control", sa.String(300), nullable=True),  # soft landing, pacing, spike
    # fields left out because the database could not store them (service.recorder)
    sa.Column("dropped_fields", sa.String(300), nullable=True),
    sa.Column("left_out", sa.JSON, nullable=True),  # [{"model", "reason"}] not considered
    sa.Column("ood_score", DOUBLE, nullable=True),  # how unlike the training prompts, 0 to 1
    # "judge": the LLM judge's own call (x-switchboard-purpose), not a tenant's traffic
    sa.Column("purpose", sa.String(16), nullable=True),
    # exploration sent it to a random model instead of the router's decision (auto-routed only)
    sa.Column("explored", sa.Boolean, nullable=True),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.id"), nullable=False),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("score", DOUBLE, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("source", sa.String(16), nullable=False, server_default="user"),  # user, judge
    sa.Index("ix_feedback_request_id", "request_id"),
)

# what the LLM judge made of each answer it asked about (training/judge.py), one row per answer:
# a reply without a grade is kept as "unparsable" so that a rerun does not pay for it again
judge_verdicts = sa.Table(
    "judge_verdicts",
    metadata,
    sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.id"), primary_key=True),
    sa.Column("outcome", sa.String(16), nullable=False),  # graded, unparsable
    sa.Column("score", DOUBLE, nullable=True),  # the grade in [0, 1]; null when unparsable
    sa.Column("judge_model", sa.String(200), nullable=False),
    sa.Column("judge_request_id", sa.String(64), nullable=True),  # the judge's own call
    sa.Column("reply", sa.Text, nullable=True),  # the judge's reply, cut to 2,000 characters
    sa.Column("created_at", UTC_TIME, nullable=False),
)

budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(300), nullable=False),  # global, tenant:N, key:ID, model:ID
    sa.Column("period", sa.String(8), nullable=False),  # day, week, month, total
    sa.Column("limit_usd", DOUBLE, nullable=False),
    sa.Column("alert_at", sa.JSON, nullable=False),  # fractions of the limit
    sa.Column("webhook_url", sa.Text, nullable=True),
    sa.Column("email", sa.Text, nullable=True),
    sa.Column("soft_landing_at", DOUBLE, nullable=True),  # remaining fraction that starts it
    sa.Column("soft_threshold", DOUBLE, nullable=True),
    sa.Column("pacing", sa.Boolean, nullable=False, default=False),
    sa.Column("pacing_state", sa.JSON, nullable=True),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("updated_at", UTC_TIME, nullable=False),
    sa.UniqueConstraint("scope", "period", name="uq_budgets_scope_period"),
)

budget_windows = sa.Table(
    "budget_windows",
    metadata,
    sa.Column("budget_id", sa.Integer, sa.ForeignKey("budgets.id", ondelete="CASCADE")),
    sa.Column("period_start", UTC_TIME),
    sa.Column("spent_usd", DOUBLE, nullable=False, default=0.0),
    sa.Column("reserved_usd", DOUBLE, nullable=False, default=0.0),
    sa.Column("requests", sa.Integer, nullable=False, default=0),
    sa.PrimaryKeyConstraint("budget_id", "period_start"),
)

budget_reservations = sa.Table(
    "budget_reservations",
    metadata,
    sa.Column("id", sa.String(120), primary_key=True),  # request id, model, budget id
    sa.Column("budget_id", sa.Integer, nullable=False),
    sa.Column("period_start", UTC_TIME, nullable=False),
    sa.Column("amount_usd", DOUBLE, nullable=False),
    sa.Column("expires_at", UTC_TIME, nullable=False, index=True),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),  # once per crossing
    sa.Column("kind", sa.String(32), nullable=False),  # budget_threshold, spend_spike
    sa.Column("budget_id", sa.Integer, nullable=True, index=True),
    sa.Column("scope", sa.String(300), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("webhook_status", sa.String(200), nullable=True),
    sa.Column("email_status", sa.String(200), nullable=True),
)

spend_breakers = sa.Table(
    "spend_breakers",
    metadata,
    sa.Column("scope", sa.String(300), primary_key=True),  # global or tenant:NAME
    sa.Column("tripped_at", UTC_TIME, nullable=False),
    sa.Column("open_until", UTC_TIME, nullable=True),  # null: until reset
    sa.Column("reason", sa.Text, nullable=False),
)

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("arms", sa.JSON, nullable=False),  # [{"name", "router", "weight"}], control first
    sa.Column("unit", sa.String(16), nullable=False),  # tenant, user or request: what keeps its arm
    sa.Column("margin", DOUBLE, nullable=False),  # stop an arm worse than control beyond this
    sa.Column("min_feedback", sa.Integer, nullable=False),  # per arm, before stopping early
    sa.Column("status", sa.String(16), nullable=False),  # running, stopped
    sa.Column("started_at", UTC_TIME, nullable=False),
    sa.Column("stopped_at", UTC_TIME, nullable=True),
    sa.Column("stop_reason", sa.Text, nullable=True),
    sa.Column("max_requests", sa.Integer, nullable=True),  # stop at this many requests
    sa.Column("forced", sa.Boolean, nullable=False, server_default=sa.false()),  # under the minimum
    sa.Column("tenants_at_start", sa.Integer, nullable=True),  # counted for a tenant-unit start
)

upstream_models = sa.Table(
    "upstream_models",
    metadata,
    sa.Column("model_id", sa.String(200), primary_key=True),
    sa.Column("listed", sa.Boolean, nullable=False),  # in the upstream's last model listing
    sa.Column("listed_at", UTC_TIME, nullable=False),  # when that listing was read
    sa.Column("unavailable_reason", sa.Text, nullable=True),  # an answer said it is not served
    sa.Column("unavailable_at", UTC_TIME, nullable=True),
)
