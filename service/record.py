"""The ledger row of one request, filled in as the request goes, written once at its end."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.budget_leases import Hold
from service.catalog import Catalog
from service.errors import header_values
from service.ledger import Principal, now
from service.providers.base import Usage
from service.tokens import estimate_tokens

log = logging.getLogger("switchboard")


def new_request_id() -> str:
    return "sbr-" + uuid.uuid4().hex


@dataclass
class RequestRecord:
    principal: Principal
    endpoint: str
    stream: bool = False
    id: str = field(default_factory=new_request_id)
    created_at: Any = field(default_factory=now)
    started: float = field(default_factory=time.perf_counter)
    requested_model: str | None = None
    router: str | None = None
    router_version: str | None = None
    arm: str | None = None
    threshold: float | None = None
    answer_value_usd: float | None = None  # set when the value rule decided
    candidates: list[dict[str, Any]] | None = None
    left_out: list[dict[str, Any]] | None = None  # models not considered, and why
    propensity: float | None = None
    chosen_model: str | None = None
    served_model: str | None = None
    p_pass: float | None = None
    ood_score: float | None = None  # how unlike the router's training prompts (0 to 1)
    explored: bool | None = None  # exploration sent it to a random model (auto-routed only)
    rule: str | None = None  # how the router chose: cleared the threshold, or most likely
    expected_cost_usd: float | None = None
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    status: str = "error"
    http_status: int = 500
    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    catalog_cost_usd: float | None = None
    upstream_cost_usd: float | None = None
    upstream_ms: float = 0.0
    first_byte_ms: float | None = None
    end_user: str | None = None
    prompt: str | None = None
    response: str | None = None
    usage_estimated: bool = False
    hold: Hold | None = None  # the budget reservation of the attempt in flight or served
    charged_usd: float | None = None
    spend_control: str | None = None  # how spend controls steered the routing, if they did
    ended_ms: float | None = None
    warnings: list[str] = field(default_factory=list)
    purpose: str | None = None  # "judge": the LLM judge's own call (x-switchboard-purpose)

    def elapsed_ms(self) -> float:
        if self.ended_ms is not None:
            return self.ended_ms
        return (time.perf_counter() - self.started) * 1000

    def end(self) -> None:
        """Freeze the latency: the row may be written later."""
        self.ended_ms = (time.perf_counter() - self.started) * 1000

    def fail(self, status: int, code: str, message: str) -> None:
        self.status, self.http_status, self.error_code = "error", status, code
        self.error_message = message[:2000]

    def price(self, catalog: Catalog, usage: Usage | None, prompt: str, answer: str) -> None:
        """Tokens and cost from the upstream's usage, or estimated from the texts without it.

        The billed cost is the upstream's own figure when it reports one, else the catalog's.
        An unpriced model leaves the cost null, never 0.
        """
        if usage is None:
            self.usage_estimated = True
            usage = Usage(estimate_tokens(prompt), estimate_tokens(answer))
        self.prompt_tokens, self.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        model = self.served_model
        if model is not None and model in catalog:
            self.catalog_cost_usd = catalog.get(model).cost_usd(
                usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
            )
        self.upstream_cost_usd = usage.upstream_cost_usd
        self.cost_usd = (
            self.upstream_cost_usd if self.upstream_cost_usd is not None else self.catalog_cost_usd
        )
        if self.cost_usd is None and model is not None:
            self.warnings.append(
                f"{model} has no price in the catalog: cost not recorded "
                "(switchboard models sync refreshes prices)"
            )
            log.warning("unpriced model %s: request %s has no cost", model, self.id)

    def row(self) -> dict[str, Any]:
        latency = self.elapsed_ms()
        return {
            "id": self.id,
            "created_at": self.created_at,
            "tenant_id": self.principal.tenant_id,
            "api_key_id": self.principal.api_key_id,
            "endpoint": self.endpoint,
            "requested_model": self.requested_model,
            "router": self.router,
            "router_version": self.router_version,
            "arm": self.arm,
            "threshold": self.threshold,
            "answer_value_usd": self.answer_value_usd,
            "candidates": self.candidates,
            "propensity": self.propensity,
            "chosen_model": self.chosen_model,
            "served_model": self.served_model,
            "fallbacks": self.fallbacks or None,
            "attempts": self.attempts,
            "stream": self.stream,
            "status": self.status,
            "http_status": self.http_status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "catalog_cost_usd": self.catalog_cost_usd,
            "upstream_cost_usd": self.upstream_cost_usd,
            "latency_ms": latency,
            "upstream_ms": self.upstream_ms,
            "overhead_ms": max(0.0, latency - self.upstream_ms),
            "first_byte_ms": self.first_byte_ms,
            "end_user": self.end_user,
            "prompt": self.prompt,
            "response": self.response,
            "reserved_usd": self.hold.amount_usd if self.hold else None,
            "charged_usd": self.charged_usd,
            "spend_control": self.spend_control,
            "dropped_fields": None,
            "left_out": self.left_out,
            "ood_score": self.ood_score,
            "purpose": self.purpose,
            "explored": self.explored,
        }

    def headers(self) -> dict[str, str]:
        """The ``x-switchboard-*`` response headers known so far."""
        headers = {"x-switchboard-request-id": self.id}
        if self.served_model or self.chosen_model:
            headers["x-switchboard-model"] = str(self.served_model or self.chosen_model)
        headers["x-switchboard-router"] = (
            f"{self.router}@{self.router_version}" if self.router else "none"
        )
        if self.p_pass is not None:
            headers["x-switchboard-p-pass"] = f"{self.p_pass:.4f}"
        if self.ood_score is not None:
            headers["x-switchboard-ood-score"] = f"{self.ood_score:.4f}"
        if self.threshold is not None:
            headers["x-switchboard-threshold"] = f"{self.threshold:.4f}"
        if self.cost_usd is not None:
            headers["x-switchboard-cost-usd"] = f"{self.cost_usd:.8f}"
        headers["x-switchboard-fallbacks"] = str(len(self.fallbacks))
        if self.spend_control:
            headers["x-switchboard-spend-control"] = self.spend_control
        if self.warnings:
            headers["x-switchboard-warning"] = "; ".join(self.warnings)
        headers["x-switchboard-overhead-ms"] = (
            f"{max(0.0, self.elapsed_ms() - self.upstream_ms):.2f}"
        )
        return header_values(headers)

    def metadata(self) -> dict[str, Any]:
        """Routing metadata for the response body (and the final stream chunk)."""
        return {
            "request_id": self.id,
            "router": self.router,
            "router_version": self.router_version,
            "chosen_model": self.chosen_model,
            "p_pass": self.p_pass,
            "ood_score": self.ood_score,
            "rule": self.rule,
            "threshold": self.threshold,
            "fallbacks": self.fallbacks,
            "cost_usd": self.cost_usd,
            "usage_estimated": self.usage_estimated,
            "spend_control": self.spend_control,
            "dropped_fields": None,
            "left_out": self.left_out,
        }
