"""Alerts: budget thresholds and spend spikes, each sent once, by webhook and by email.

An alert is a row whose ``dedupe_key`` names the crossing (budget, period, threshold; or a
breaker trip): the replica whose INSERT creates it delivers it, every other replica's INSERT
does nothing, so each crossing alerts exactly once however many replicas see it.

Webhooks get the alert as JSON with ``X-Switchboard-Signature: t=<unix time>,v1=<hex>``, the
HMAC-SHA256 of ``"<t>.<body>"`` under ``SWITCHBOARD_WEBHOOK_SECRET``; email goes through the
configured SMTP relay (STARTTLS and login). Both retry with exponential backoff; the outcome of
each channel is stored on the alert.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.budgets import Window
from service.config import Settings
from service.ledger import insert_ignore, now
from service.tables import alerts

log = logging.getLogger("switchboard.alerts")


class WebhookRefused(ValueError):
    """A webhook URL switchboard will not call."""


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


ALLOW_HINT = " (SWITCHBOARD_ALLOW_PRIVATE_WEBHOOKS=true allows them, for tests and on-premises)"


def check_webhook_url(url: str, allow_private: bool, resolve: bool = False) -> str:
    """The URL if switchboard may post to it: http(s), a host, and (unless allowed) no
    loopback or private address, checked on the literal host and, with ``resolve``, on every
    address the name resolves to (at send time, against DNS rebinding)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("a webhook URL needs http:// or https:// and a host")
    if allow_private:
        return url
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        raise WebhookRefused(f"webhooks to loopback hosts are refused{ALLOW_HINT}")
    try:
        literal = not _public(host)
    except ValueError:  # a name, not an address
        literal = False
    if literal:
        raise WebhookRefused(f"webhooks to private or loopback addresses are refused{ALLOW_HINT}")
    if resolve:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as error:
            raise WebhookRefused(f"cannot resolve {host}: {error}") from None
        if any(not _public(str(info[4][0])) for info in infos):
            raise WebhookRefused(f"{host} resolves to a private or loopback address{ALLOW_HINT}")
    return url


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class Alerts:
    """Creates alerts once and delivers them in the background."""

    def __init__(self, engine: AsyncEngine, settings: Settings, client: httpx.AsyncClient):
        self.engine = engine
        self.settings = settings
        self.client = client
        self.pending: set[asyncio.Task[None]] = set()

    async def budget_windows(self, windows: list[Window]) -> None:
        """Alert every threshold that these windows' spend has reached, once per period."""
        for window in windows:
            budget = window.budget
            if budget.limit_usd <= 0:
                continue
            used = window.spent_usd / budget.limit_usd
            for threshold in budget.alert_at:
                if used + 1e-12 >= threshold:
                    await self.budget_threshold(window, threshold)

    async def budget_threshold(self, window: Window, threshold: float) -> None:
        """Alert ``threshold`` of this window once: spend reached it (a refused hold is not
        spend, and alerts no threshold: ``budget_refused``)."""
        budget = window.budget
        payload = {
            "type": "budget_threshold",
            "budget": budget.describe(),
            "threshold": threshold,
            "spent_usd": window.spent_usd,
            "limit_usd": budget.limit_usd,
            "period_start": window.start.isoformat(),
            "resets_at": window.resets_at.isoformat() if window.resets_at else None,
        }
        message = (
            f"budget {budget.scope} ({budget.period}) has used {threshold:.0%} of its "
            f"${budget.limit_usd:.4f} limit: ${window.spent_usd:.4f} spent"
        )
        await self.create(
            f"budget:{budget.id}:{window.start.isoformat()}:{threshold}",
            "budget_threshold",
            budget.scope,
            message,
            payload,
            budget.id,
            budget.webhook_url,
            budget.email,
        )

    async def budget_refused(self, window: Window, request_usd: float) -> None:
        """A notice that requests no longer fit this budget: a request whose worst case was
        ``request_usd`` was refused. At most one per budget window and hour."""
        budget = window.budget
        hour = now().strftime("%Y-%m-%dT%H")
        payload = {
            "type": "budget_refused",
            "budget": budget.describe(),
            "refused_request_usd": request_usd,
            "spent_usd": window.spent_usd,
            "reserved_usd": window.reserved_usd,
            "limit_usd": budget.limit_usd,
            "period_start": window.start.isoformat(),
            "resets_at": window.resets_at.isoformat() if window.resets_at else None,
        }
        message = (
            f"budget {budget.scope} ({budget.period}) refused a request that may cost up to "
            f"${request_usd:.6f}: ${window.spent_usd:.4f} spent and ${window.reserved_usd:.4f} "
            f"held of ${budget.limit_usd:.4f}"
        )
        await self.create(
            f"refused:{budget.id}:{window.start.isoformat()}:{hour}",
            "budget_refused",
            budget.scope,
            message,
            payload,
            budget.id,
            budget.webhook_url,
            budget.email,
        )

    async def create(
        self,
        dedupe_key: str,
        kind: str,
        scope: str,
        message: str,
        payload: dict[str, Any],
        budget_id: int | None = None,
        webhook_url: str | None = None,
        email: str | None = None,
    ) -> bool:
        """Store the alert unless it exists; the creator delivers it. True if new."""
        async with self.engine.begin() as conn:
            created = await insert_ignore(
                conn,
                alerts,
                dedupe_key=dedupe_key,
                kind=kind,
                budget_id=budget_id,
                scope=scope,
                message=message,
                payload=payload,
                created_at=now(),
            )
            if not created:
                return False
            alert_id = int(
                await conn.scalar(sa.select(alerts.c.id).where(alerts.c.dedupe_key == dedupe_key))
                or 0
            )
        log.warning("alert: %s", message)
        recipients = email or self.settings.alert_email_to
        body = {"id": alert_id, "kind": kind, "message": message, **payload}
        task = asyncio.create_task(self._deliver(alert_id, body, webhook_url, recipients))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return True

    async def drain(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)

    async def _deliver(
        self, alert_id: int, body: dict[str, Any], webhook_url: str | None, email: str | None
    ) -> None:
        status: dict[str, str] = {}
        if webhook_url:
            status["webhook_status"] = await self._retrying(lambda: self._post(webhook_url, body))
        if email and self.settings.smtp_host:
            recipients = [r.strip() for r in email.split(",") if r.strip()]
            status["email_status"] = await self._retrying(
                lambda: asyncio.to_thread(self._send_email, recipients, body)
            )
        elif email:
            status["email_status"] = "not sent: SWITCHBOARD_SMTP_HOST is not set"
        if status:
            async with self.engine.begin() as conn:
                await conn.execute(alerts.update().where(alerts.c.id == alert_id).values(**status))

    async def _retrying(self, send: Any) -> str:
        error = ""
        for attempt in range(self.settings.alert_retries):
            try:
                await send()
                return f"sent (attempt {attempt + 1})"
            except Exception as failure:  # every delivery error is retried, then recorded
                error = f"{type(failure).__name__}: {failure}"[:150]
                if attempt + 1 < self.settings.alert_retries:
                    await asyncio.sleep(self.settings.alert_backoff_s * 2**attempt)
        log.warning("alert delivery failed: %s", error)
        return f"failed: {error}"

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        await asyncio.to_thread(
            check_webhook_url, url, self.settings.allow_private_webhooks, resolve=True
        )
        raw = json.dumps(body, sort_keys=True).encode()
        headers = {"content-type": "application/json", "x-switchboard-alert-id": str(body["id"])}
        if self.settings.webhook_secret:
            secret = self.settings.webhook_secret.get_secret_value()
            headers["x-switchboard-signature"] = sign(secret, int(time.time()), raw)
        response = await self.client.post(url, content=raw, headers=headers, timeout=10)
        response.raise_for_status()

    def _send_email(self, recipients: list[str], body: dict[str, Any]) -> None:
        s = self.settings
        assert s.smtp_host is not None
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = ", ".join(recipients)
        message["Subject"] = f"[switchboard] {body['message']}"[:200]
        message.set_content(json.dumps(body, indent=1, sort_keys=True))
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=10) as smtp:
            if s.smtp_starttls:
                context = ssl.create_default_context(
                    cafile=str(s.smtp_ca_file) if s.smtp_ca_file else None
                )
                smtp.starttls(context=context)
            if s.smtp_username and s.smtp_password:
                smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
            smtp.send_message(message)

    async def list(self, scopes: list[str] | None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest alerts, of the given scopes or (None) all."""
        query = alerts.select().order_by(alerts.c.id.desc()).limit(limit)
        if scopes is not None:
            query = query.where(alerts.c.scope.in_(scopes))
        async with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in await conn.execute(query)]
        for row in rows:
            row["created_at"] = row["created_at"].isoformat()
        return rows
