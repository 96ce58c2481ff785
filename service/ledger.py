"""The ledger: SQLAlchemy tables and queries for tenants, API keys, requests and feedback.

SQLite by default, PostgreSQL through ``SWITCHBOARD_DATABASE_URL``; the schema is created and
upgraded by the Alembic migrations in service/migrations (``switchboard db upgrade``, or on
start). Every request that reaches the chat endpoint leaves exactly one ``requests`` row with its
full routing decision, whether it succeeded or not. API keys are stored as SHA-256 hashes only.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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
    sa.Column("threshold", DOUBLE, nullable=True),
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
    sa.Index("ix_feedback_request_id", "request_id"),
)

KEY_PREFIX = "sb-"
AUTH_CACHE_SECONDS = 30.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant through one of its keys, or the admin."""

    tenant_id: int
    tenant: str
    api_key_id: int | None
    admin: bool = False


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL lets readers and one writer proceed together; writers wait instead of failing."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Ledger:
    """Async access to the ledger tables."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._auth_cache: dict[str, tuple[float, Principal | None]] = {}

    @classmethod
    def connect(cls, async_url: str) -> Ledger:
        options: dict[str, Any] = {}
        if async_url.startswith("sqlite"):
            options["connect_args"] = {"timeout": 30}
        else:
            options.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        engine = create_async_engine(async_url, **options)
        if async_url.startswith("sqlite"):
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    async def ensure_tenant(self, name: str) -> int:
        async with self.engine.begin() as conn:
            found = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.name == name))
            if found is not None:
                return int(found)
            result = await conn.execute(tenants.insert().values(name=name, created_at=now()))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def create_key(self, tenant: str) -> str:
        """A new API key for ``tenant`` (created if new); only its hash is stored."""
        tenant_id = await self.ensure_tenant(tenant)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    tenant_id=tenant_id,
                    key_hash=hash_key(key),
                    key_prefix=key[:10],
                    created_at=now(),
                )
            )
        return key

    async def authenticate(self, key: str) -> Principal | None:
        """The tenant that owns ``key``, or None; answers are cached for 30 seconds."""
        digest = hash_key(key)
        cached = self._auth_cache.get(digest)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        query = (
            sa.select(api_keys.c.id, api_keys.c.tenant_id, tenants.c.name)
            .join(tenants, tenants.c.id == api_keys.c.tenant_id)
            .where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        principal = Principal(row.tenant_id, row.name, row.id) if row else None
        self._auth_cache[digest] = (time.monotonic() + AUTH_CACHE_SECONDS, principal)
        return principal

    async def record_request(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(requests.insert().values(**row))

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(requests.select().where(requests.c.id == request_id))).first()
        return dict(row._mapping) if row else None

    async def list_requests(
        self, tenant_id: int | None, limit: int, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest requests, of one tenant or (``None``) of all, optionally by status."""
        query = requests.select().order_by(requests.c.created_at.desc()).limit(limit)
        if tenant_id is not None:
            query = query.where(requests.c.tenant_id == tenant_id)
        if status is not None:
            query = query.where(requests.c.status == status)
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    async def request_totals(self, tenant_id: int | None) -> dict[str, Any]:
        """Requests, errors and recorded spend, of one tenant or (``None``) of all."""
        query = sa.select(
            sa.func.count(),
            sa.func.count().filter(requests.c.status != "ok"),
            sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0),
        )
        if tenant_id is not None:
            query = query.where(requests.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            count, errors, cost = (await conn.execute(query)).one()
        return {"requests": int(count), "errors": int(errors), "cost_usd": float(cost)}

    async def add_feedback(
        self, request_id: str, tenant_id: int, score: float, comment: str | None
    ) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                feedback.insert().values(
                    request_id=request_id,
                    tenant_id=tenant_id,
                    score=score,
                    comment=comment,
                    created_at=now(),
                )
            )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def count(self, table: sa.Table) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
