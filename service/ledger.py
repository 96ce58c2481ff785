"""The ledger: SQLAlchemy tables and queries for tenants, API keys, requests and feedback.

SQLite by default, PostgreSQL through ``SWITCHBOARD_DATABASE_URL``; the schema is created and
upgraded by the Alembic migrations in service/migrations (``switchboard db upgrade``, or on
start). Every request that reaches the chat endpoint leaves exactly one ``requests`` row with its
full routing decision, whether it succeeded or not. API keys are stored as SHA-256 hashes only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.refreshing import Refreshing
from service.tables import api_keys, feedback, requests, tenants

KEY_PREFIX = "sb-"
AUTH_CACHE_SECONDS = 30.0
REVOCATION_POLL_S = 0.5  # how often each process looks for revoked keys (refused within ~1 s)
REVOCATION_LOOKBACK = timedelta(minutes=2)  # revocations re-read: covers replicas' clock skew
AUTH_CACHE_ENTRIES = 10_000  # wrong keys are cached too: a flood of them must not grow memory
SQLITE_READONLY = 8  # the primary result code of "attempt to write a readonly database"


def tenant_name(name: str) -> str:
    """The tenant name, stripped; ValueError unless it is 1 to 200 printable characters (it
    appears in headers, budget scopes and alerts)."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValueError("a tenant name needs 1 to 200 characters")
    if not name.isprintable():
        raise ValueError("a tenant name cannot hold control characters (line breaks, tabs, NUL)")
    return name


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


async def insert_ignore(conn: Any, table: sa.Table, **values: Any) -> bool:
    """INSERT a row unless it would break a unique key (ON CONFLICT DO NOTHING); True if new."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports no rowcount for this statement
    key = next(iter(table.primary_key.columns))
    result = await conn.execute(statement.returning(key))
    return result.first() is not None


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL lets readers and one writer proceed together; writers wait instead of failing."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _drop_read_only_connection(context: Any) -> None:
    """SQLite opens the file read-only when it may not write it at that moment, and that
    connection stays read-only when the permission comes back. Its first failed write drops it
    from the pool (as if disconnected; the pool's other connections stay), so the retry opens a
    fresh connection, which writes once the file is writable again."""
    code = getattr(context.original_exception, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == SQLITE_READONLY:
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False


class Ledger:
    """Async access to the ledger tables."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._auth_cache: dict[str, Refreshing[Principal | None]] = {}
        self._revoked_seen: set[str] = set()  # digests already dropped from the cache

    @classmethod
    def connect(cls, async_url: str) -> Ledger:
        options: dict[str, Any] = {}
        if async_url.startswith("sqlite"):
            # one connection per process: SQLite takes one writer at a time anyway, and
            # queueing in the pool is fair and immediate where its busy handler sleeps and retries
            options.update(connect_args={"timeout": 30}, pool_size=1, max_overflow=0)
        else:
            options.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        engine = create_async_engine(async_url, **options)
        if async_url.startswith("sqlite"):
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            sa.event.listen(engine.sync_engine, "handle_error", _drop_read_only_connection)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    async def ensure_tenant(self, name: str) -> int:
        """The tenant's id, creating it if new (safe when replicas create it at once)."""
        async with self.engine.begin() as conn:
            found = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.name == name))
            if found is None:
                await insert_ignore(conn, tenants, name=name, created_at=now())
                found = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.name == name))
            assert found is not None
            return int(found)

    async def create_key(self, tenant: str) -> tuple[str, int]:
        """A new API key for ``tenant`` (created if new) and its id; only its hash is stored."""
        tenant_id = await self.ensure_tenant(tenant_name(tenant))
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                api_keys.insert().values(
                    tenant_id=tenant_id,
                    key_hash=hash_key(key),
                    key_prefix=key[:10],
                    created_at=now(),
                )
            )
        return key, int(result.inserted_primary_key[0])  # type: ignore[index]

    async def authenticate(self, key: str) -> Principal | None:
        """The tenant that owns ``key``, or None; answers are cached for 30 seconds
        (service.refreshing)."""
        digest = hash_key(key)
        cached = self._auth_cache.get(digest)
        if cached is None:
            if len(self._auth_cache) >= AUTH_CACHE_ENTRIES:
                self._auth_cache = {d: c for d, c in self._auth_cache.items() if not c.expired}
                if len(self._auth_cache) >= AUTH_CACHE_ENTRIES:
                    self._auth_cache.clear()
            cached = Refreshing(partial(self._read_principal, digest), AUTH_CACHE_SECONDS)
            self._auth_cache[digest] = cached
        return await cached.get()

    async def list_keys(self) -> list[dict[str, Any]]:
        """Every API key: id, tenant, prefix, created_at, revoked_at (never the key)."""
        query = (
            sa.select(
                api_keys.c.id,
                tenants.c.name.label("tenant"),
                api_keys.c.key_prefix.label("prefix"),
                api_keys.c.created_at,
                api_keys.c.revoked_at,
            )
            .join(tenants, tenants.c.id == api_keys.c.tenant_id)
            .order_by(api_keys.c.id)
        )
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    async def revoke_key(self, key_or_id: str | int) -> dict[str, Any] | None:
        """Revoke a key given as the key itself or its id (already revoked: left as it was);
        its row, or None if there is no such key. Every process refuses it within about
        ``2 * REVOCATION_POLL_S`` (``poll_revocations``); this one at once."""
        if isinstance(key_or_id, int):
            which = api_keys.c.id == key_or_id
        else:
            which = api_keys.c.key_hash == hash_key(key_or_id)
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.update()
                .where(which, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
            found = (
                await conn.execute(sa.select(api_keys.c.id, api_keys.c.key_hash).where(which))
            ).first()
        if found is None:
            return None
        self._forget(found.key_hash)
        return next(k for k in await self.list_keys() if k["id"] == found.id)

    async def poll_revocations(self) -> int:
        """Drop recently revoked keys from this process's cache; how many were dropped."""
        since = now() - REVOCATION_LOOKBACK
        query = sa.select(api_keys.c.key_hash).where(api_keys.c.revoked_at >= since)
        async with self.engine.connect() as conn:
            digests = set((await conn.scalars(query)).all())
        fresh = digests - self._revoked_seen
        for digest in fresh:
            self._forget(digest)
        self._revoked_seen = digests
        return len(fresh)

    def _forget(self, digest: str) -> None:
        cached = self._auth_cache.pop(digest, None)
        if cached is not None:
            cached.invalidate()  # a read in flight must not put the key back

    async def _read_principal(self, digest: str) -> Principal | None:
        query = (
            sa.select(api_keys.c.id, api_keys.c.tenant_id, tenants.c.name)
            .join(tenants, tenants.c.id == api_keys.c.tenant_id)
            .where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return Principal(row.tenant_id, row.name, row.id) if row else None

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

    async def cost_mismatches(
        self, since: datetime, tolerance: float, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Requests whose upstream-reported cost and catalog price differ by more than
        ``tolerance`` of the upstream's figure (``switchboard reconcile``)."""
        upstream, catalog = requests.c.upstream_cost_usd, requests.c.catalog_cost_usd
        query = (
            sa.select(
                requests.c.id,
                requests.c.created_at,
                requests.c.served_model,
                requests.c.prompt_tokens,
                requests.c.completion_tokens,
                upstream,
                catalog,
            )
            .where(
                requests.c.created_at >= since,
                upstream.is_not(None),
                catalog.is_not(None),
                sa.func.abs(upstream - catalog) > tolerance * sa.func.abs(upstream),
            )
            .order_by(requests.c.created_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    async def add_feedback(
        self,
        request_id: str,
        tenant_id: int,
        score: float,
        comment: str | None,
        source: str = "user",
    ) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                feedback.insert().values(
                    request_id=request_id,
                    tenant_id=tenant_id,
                    score=score,
                    comment=comment,
                    created_at=now(),
                    source=source,
                )
            )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def count(self, table: sa.Table) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
