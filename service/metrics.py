"""Prometheus metrics of one service process: requests, latency, routing mix, spend, errors.

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (``switchboard serve`` does it
for ``--workers`` > 1) and /metrics aggregates all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.record import RequestRecord

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "switchboard_requests",
            "Requests by endpoint, status and router",
            ["endpoint", "status", "http_status", "router"],
            registry=r,
        )
        self.latency = Histogram(
            "switchboard_request_latency_seconds",
            "End-to-end request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "switchboard_overhead_seconds",
            "Latency not spent waiting for upstreams",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.routed = Counter(
            "switchboard_served",
            "Requests served, by model (the routing mix)",
            ["model"],
            registry=r,
        )
        self.spend = Counter(
            "switchboard_spend_usd", "Spend in USD by model", ["model"], registry=r
        )
        self.tokens = Counter(
            "switchboard_tokens", "Tokens by model and kind", ["model", "kind"], registry=r
        )
        self.upstream_errors = Counter(
            "switchboard_upstream_errors",
            "Failed upstream attempts by model and kind",
            ["model", "kind"],
            registry=r,
        )

    def observe(self, record: RequestRecord) -> None:
        row_latency_s = record.elapsed_ms() / 1000
        self.requests.labels(
            record.endpoint, record.status, str(record.http_status), record.router or "none"
        ).inc()
        self.latency.labels(record.endpoint).observe(row_latency_s)
        self.overhead.labels(record.endpoint).observe(
            max(0.0, row_latency_s - record.upstream_ms / 1000)
        )
        if record.status == "ok" and record.served_model:
            self.routed.labels(record.served_model).inc()
        if record.served_model:
            if record.cost_usd is not None:
                self.spend.labels(record.served_model).inc(record.cost_usd)
            if record.prompt_tokens:
                self.tokens.labels(record.served_model, "prompt").inc(record.prompt_tokens)
            if record.completion_tokens:
                self.tokens.labels(record.served_model, "completion").inc(record.completion_tokens)

    def upstream_error(self, model: str, kind: str) -> None:
        self.upstream_errors.labels(model, kind).inc()

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
