"""Which models the configured upstream serves now, shared by every replica through the ledger.

- A listing: ``switchboard models sync``, and each replica at start and every
  ``SWITCHBOARD_LISTING_REFRESH_S`` (6 h) when an OpenRouter key is set, reads the upstream's
  ``/models`` and records the models it lists (table ``upstream_models``). Auto routing never
  chooses a model the last listing left out. Before any listing is recorded (the replay
  upstream, a fresh install with no key) nothing is left out for this reason.
- An answer that says a model does not exist there (OpenRouter's 400 "... is not a valid model
  ID", 404 "No endpoints found ...") marks the model unavailable at once: in this replica at
  once, in the table for the others, logged once; the next listing that lists it clears it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger import now
from service.refreshing import Refreshing
from service.tables import upstream_models

log = logging.getLogger("switchboard")
NOT_SERVED = re.compile(
    r"not a valid model|no endpoints found(?! that)|model[^.]{0,40}(does not exist|not found)",
    re.I,
)  # "No endpoints found that support tool use" is about the request, not the model
NOT_LISTED = "the upstream's model listing leaves it out"


def says_not_served(message: str) -> bool:
    """Whether an upstream error message says the model itself is not served there."""
    return NOT_SERVED.search(message) is not None


async def fetch_listing(base_url: str, api_key: str | None, timeout_s: float = 30.0) -> Any:
    """The upstream's ``GET /models`` JSON (OpenRouter's shape)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        response = await client.get(base_url.rstrip("/") + "/models", headers=headers)
        response.raise_for_status()
        return response.json()


def listed_ids(payload: Any) -> set[str]:
    """Model ids of a listing, variants (``:free``) folded into their base id."""
    data = payload.get("data", []) if isinstance(payload, dict) else []
    return {str(m["id"]).split(":", 1)[0] for m in data if isinstance(m, dict) and m.get("id")}


class Availability:
    """This replica's view of what the upstream serves, refreshed from the ledger."""

    def __init__(self, engine: AsyncEngine | None, refresh_s: float):
        self.engine = engine
        self._rows: Refreshing[tuple[bool, dict[str, str | None]]] = Refreshing(
            self._read, refresh_s
        )
        self.has_listing = False  # a listing was recorded: what it leaves out is not served
        self.served: dict[str, str | None] = {}  # model -> why it is not served (None: served)
        self._marked: dict[str, str] = {}  # marked unavailable by this replica's own calls

    @classmethod
    def unknown(cls) -> Availability:
        """No ledger to share a listing through: nothing is known to be unserved."""
        return cls(None, 0.0)

    async def _read(self) -> tuple[bool, dict[str, str | None]]:
        if self.engine is None:
            return False, {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(upstream_models))).all()
        served = {
            r.model_id: (r.unavailable_reason or (None if r.listed else NOT_LISTED)) for r in rows
        }
        return any(r.listed for r in rows), served

    async def refresh(self) -> None:
        """Take the ledger's listing into this replica (upkeep, and once at start)."""
        self.has_listing, self.served = await self._rows.get()

    def unavailable(self, model: str) -> str | None:
        """Why ``model`` is not served now, or None when it is (or nothing is known)."""
        if model in self._marked:
            return self._marked[model]
        if model in self.served:
            return self.served[model]
        return NOT_LISTED if self.has_listing else None

    async def record_listing(self, models: Iterable[str]) -> int:
        """Replace the recorded listing (clearing marks of the models it lists)."""
        assert self.engine is not None
        listed = sorted(set(models))
        at = now()
        async with self.engine.begin() as conn:
            await conn.execute(upstream_models.delete())
            if listed:
                await conn.execute(
                    upstream_models.insert(),
                    [{"model_id": m, "listed": True, "listed_at": at} for m in listed],
                )
        self._marked = {m: r for m, r in self._marked.items() if m not in set(listed)}
        self._rows.invalidate()
        await self.refresh()
        return len(listed)

    def mark(self, model: str, reason: str) -> bool:
        """Take ``model`` out of this replica's routing at once; True the first time (then
        ``persist`` it for the other replicas)."""
        if model in self._marked:
            return False
        self._marked[model] = reason[:300]
        log.warning("model %s is not served by the upstream: %s", model, reason[:300])
        return True

    async def persist(self, model: str) -> None:
        """Record this replica's mark of ``model`` in the ledger."""
        reason = self._marked.get(model)
        if reason is None or self.engine is None:
            return
        values = {"unavailable_reason": reason, "unavailable_at": now()}
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                upstream_models.update().where(upstream_models.c.model_id == model).values(values)
            )
            if not updated.rowcount:
                await conn.execute(
                    upstream_models.insert().values(
                        model_id=model, listed=False, listed_at=now(), **values
                    )
                )
        self._rows.invalidate()
