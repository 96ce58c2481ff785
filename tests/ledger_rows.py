"""Ledger rows of auto-routed, answered requests, as the gateway writes them, for tests that
read logged traffic without a service (off-policy evaluation, retraining)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def routed_request(
    request_id: str,
    created_at: datetime,
    router_version: str,
    threshold: float,
    candidates: list[dict[str, Any]],
    decision: str,
    served: str,
    propensity: float,
    cost_usd: float,
    prompt: str,
    **more: Any,
) -> dict[str, Any]:
    """One ``requests`` row: the learned router decided ``decision`` and ``served`` answered
    (the two differ when exploration drew another model)."""
    return {
        "id": request_id,
        "created_at": created_at,
        "tenant_id": 1,
        "endpoint": "chat.completions",
        "requested_model": "switchboard/auto",
        "router": "learned",
        "router_version": router_version,
        "threshold": threshold,
        "candidates": candidates,
        "propensity": propensity,
        "explored": served != decision,
        "chosen_model": served,
        "served_model": served,
        "status": "ok",
        "http_status": 200,
        "attempts": 1,
        "stream": False,
        "latency_ms": 10.0,
        "cost_usd": cost_usd,
        "prompt": prompt,
        **more,
    }
