"""Settings read from the environment (the only module that reads it).

Every setting is ``SWITCHBOARD_<NAME>`` in the environment, except the provider keys, which use
the names their providers document (``OPENROUTER_API_KEY``, ``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Where derived, rebuildable files go (embedding caches, the static token table)."""
    return Path(os.environ.get("SWITCHBOARD_CACHE_DIR") or REPO_ROOT / ".cache")


def _provider_key(name: str) -> AliasChoices:
    """Provider keys are read under their providers' usual names, or with our prefix."""
    return AliasChoices(name, f"SWITCHBOARD_{name}", name.lower())


class Settings(BaseSettings):
    """Service configuration; ``Settings()`` reads the environment."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_", extra="ignore", populate_by_name=True
    )

    database_url: str = f"sqlite:///{REPO_ROOT / 'switchboard.db'}"
    upstream: Literal["openrouter", "replay"] | None = None  # None: openrouter with a key
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_api_key: SecretStr | None = Field(
        None, validation_alias=_provider_key("OPENROUTER_API_KEY")
    )
    openai_api_key: SecretStr | None = Field(None, validation_alias=_provider_key("OPENAI_API_KEY"))
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=_provider_key("ANTHROPIC_API_KEY")
    )
    gemini_api_key: SecretStr | None = Field(None, validation_alias=_provider_key("GEMINI_API_KEY"))
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_base_url: str = "https://api.anthropic.com"
    gemini_base_url: str = "https://generativelanguage.googleapis.com"
    app_url: str = "https://github.com/switchboard-router/switchboard"  # OpenRouter attribution
    app_title: str = "switchboard"

    admin_key: SecretStr | None = None
    auth_disabled: bool = False  # loopback callers need no key; others still do
    store_content: bool = False  # keep prompts and answers in the ledger

    router_dir: Path = REPO_ROOT / "models" / "router"
    catalog_path: Path = REPO_ROOT / "models" / "catalog.json"
    runs_dir: Path = REPO_ROOT / "runs"  # every router version a command writes (not in git)
    journal_dir: Path = REPO_ROOT / "journal"  # per-process crash journals (service.journal)
    snapshots_dir: Path = REPO_ROOT / "datasets" / "snapshots"  # training tables, onboarded data
    aliases_path: Path | None = None  # a JSON object of your model names -> OpenRouter ids
    replay_outcomes_path: Path = REPO_ROOT / "datasets" / "outcomes.parquet"
    default_threshold: float | None = None  # None: the router's own default
    exploration_rate: float = Field(0.0, ge=0.0, le=1.0)  # share routed at random (propensity)
    # what auto routing may do with a candidate scored from fewer graded prompts than
    # calibrated_min_prompts: explore (exploration share and fallback only), route (like any
    # other), exclude (never a candidate unless allowed_models names it)
    uncalibrated_policy: Literal["explore", "route", "exclude"] = "explore"
    calibrated_min_prompts: int = Field(25, ge=0)
    # catalog models with no graded answers that join auto routing's candidates on their prior
    # (uncalibrated: exploration and fallback under the default policy), so that traffic and
    # feedback reach them; comma-separated in the environment
    explore_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    listing_refresh_s: float = 6 * 3600.0  # re-read the upstream's model listing (with a key)
    challenger_dir: Path | None = None  # a second learned router, for experiment arms
    # a tenant-unit experiment with fewer tenants is refused unless forced (few clusters)
    experiment_min_tenants: int = Field(20, ge=0)
    experiment_exploration: bool = False  # explore inside experiment arms too
    upkeep_interval_s: float = 30.0  # sweeps, breakers, pacing, experiments, champion pickup
    reference_model: str | None = None  # savings are against it; None: the dearest router model

    max_body_bytes: int = 4 * 1024 * 1024
    client_header_timeout_s: float = Field(10.0, gt=0)  # a request's headers must arrive by then
    client_body_timeout_s: float = Field(30.0, gt=0)  # and its body this long after them
    key_rate_per_minute: int | None = None  # chat requests per API key per replica; None: no cap
    retries: int = 2  # per model, after the first attempt
    backoff_base_s: float = 0.25
    backoff_max_s: float = 4.0
    max_retry_after_s: float = 10.0  # a longer Retry-After falls back instead of waiting
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    request_timeout_s: float = 120.0  # the whole request, retries and fallbacks included
    max_concurrency_per_tenant: int | None = Field(64, ge=1)  # chat requests in flight, per replica
    max_concurrency_per_key: int | None = Field(None, ge=1)  # the same per API key; None: no cap
    max_concurrency_per_provider: int = 256
    max_queue_per_provider: int = 1024
    breaker_failures: int = 5  # consecutive failures that open a model's circuit
    breaker_cooldown_s: float = 30.0
    breaker_window_s: float = 60.0  # failures count over the requests of this window
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1)  # and must be this share of them
    workers: int = 1

    # budgets (``switchboard budget set``) and spend controls
    budget_refresh_s: float = 2.0  # how stale a replica's copy of the budget list may be
    budget_max_output_tokens: int = 4096  # sent as max_tokens when a budget applies and none is
    unpriced_policy: Literal["block", "fallback"] = "block"  # unpriced models under a budget
    unpriced_prompt_usd_per_token: float = 0.00001  # the fallback price (policy "fallback")
    unpriced_completion_usd_per_token: float = 0.00003
    reconcile_tolerance: float = 0.01  # flag upstream vs catalog cost differences beyond this
    spike_multiple: float = 10.0  # spend-spike breaker: window spend over this many
    spike_window_s: float = 300.0  # times the trailing average per window trips it; 0: off
    spike_baseline_s: float = 86_400.0
    spike_min_usd: float = 10.0  # never trips below this much spend in one window
    spike_action: Literal["reject", "degrade"] = "reject"
    spike_cooldown_s: float = 900.0
    degraded_threshold: float = 0.5  # the P(pass) threshold while the breaker degrades

    # alerts
    webhook_secret: SecretStr | None = None  # signs webhook bodies (HMAC-SHA256)
    allow_private_webhooks: bool = False  # loopback and private addresses (tests, on-prem)
    alert_retries: int = 4  # delivery attempts per channel
    alert_backoff_s: float = 0.5
    alert_webhook_url: str | None = None  # for alerts without a budget (spend spikes)
    alert_email_to: str | None = None  # comma-separated; a budget's own email overrides it
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    smtp_from: str = "switchboard@localhost"
    smtp_ca_file: Path | None = None  # trust this CA for STARTTLS (a private mail relay)

    @field_validator("explore_models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _choose_upstream(self) -> Settings:
        if self.upstream is None:
            self.upstream = "openrouter" if self.openrouter_api_key else "replay"
        return self

    def provider_secrets(self) -> list[str]:
        """Every secret this process sends upstream (what redaction masks)."""
        keys = (self.openrouter_api_key, self.openai_api_key, self.anthropic_api_key)
        return [key.get_secret_value() for key in (*keys, self.gemini_api_key) if key is not None]

    @property
    def async_database_url(self) -> str:
        """The database URL with an asyncio driver (aiosqlite, psycopg)."""
        return to_async_url(self.database_url)


def to_async_url(url: str) -> str:
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite" + url.removeprefix("sqlite")
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def to_sync_url(url: str) -> str:
    """The same database through a synchronous driver (for migrations and the CLI)."""
    if url.startswith("sqlite+aiosqlite"):
        return "sqlite" + url.removeprefix("sqlite+aiosqlite")
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url
