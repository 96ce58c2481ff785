"""Analytics over the ledger: spend, savings, latency, routing mix, quality from feedback,
calibration, the router's cost-quality trade-off on recent traffic, and budgets.

Every query takes a ``Scope`` (one tenant, or everyone for the admin) and a ``Range`` of
creation times. Sums and counts run in SQL; percentiles, confidence intervals and calibration
run in Python over the rows they need (latencies: the newest ``MAX_ROWS`` of the range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.budgets import Budget, BudgetStore, utc
from service.catalog import Catalog
from service.pacing import chosen_cost
from service.schemas import AUTO_MODEL
from service.tables import alerts, feedback, requests, tenants

GROUPS = ("hour", "day", "month")
DIMENSIONS = ("none", "model", "tenant", "key", "router")
MAX_RANGE = timedelta(days=400)
DEFAULT_RANGE = timedelta(days=30)
MAX_ROWS = 100_000
# a routed prompt with an ood_score this high is counted as far from the training prompts
FAR_FROM_TRAINING = 0.5
Z95 = 1.96
# the LLM judge's own calls (x-switchboard-purpose: judge) are not a tenant's traffic: they are
# counted apart and left out of the error rate
JUDGE_CALL = requests.c.purpose == "judge"
NOT_JUDGE_CALL = requests.c.purpose.is_(None) | (requests.c.purpose != "judge")


@dataclass(frozen=True)
class Scope:
    """Whose requests: one tenant's, or (``tenant_id`` None) everyone's."""

    tenant_id: int | None

    def where(self) -> Any:
        return sa.true() if self.tenant_id is None else requests.c.tenant_id == self.tenant_id


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime

    def where(self) -> Any:
        return (requests.c.created_at >= self.start) & (requests.c.created_at < self.end)

    def describe(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def parse_time(text: str, name: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 time (UTC if it names no zone)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{name}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_range(start: str | None, end: str | None, now: datetime) -> Range:
    """The range the caller asked for (default: the last 30 days up to now)."""
    stop = parse_time(end, "end") if end else now
    if end and len(end.strip()) == 10:  # a date: include that whole day
        stop += timedelta(days=1)
    begin = parse_time(start, "start") if start else stop - DEFAULT_RANGE
    if begin >= stop:
        raise ValueError("start must be before end")
    if stop - begin > MAX_RANGE:
        raise ValueError(f"a range covers at most {MAX_RANGE.days} days")
    return Range(begin, stop)


def _bucket(dialect: str, group: str) -> Any:
    """A SQL expression naming each row's time bucket, as text."""
    if dialect == "postgresql":
        utc_time = sa.func.timezone("UTC", requests.c.created_at)
        return sa.func.to_char(sa.func.date_trunc(group, utc_time), 'YYYY-MM-DD"T"HH24:MI:SS')
    pattern = {
        "hour": "%Y-%m-%dT%H:00:00",
        "day": "%Y-%m-%dT00:00:00",
        "month": "%Y-%m-01T00:00:00",
    }
    return sa.func.strftime(pattern[group], requests.c.created_at)


def _dimension(by: str) -> Any:
    return {
        "model": sa.func.coalesce(requests.c.served_model, requests.c.chosen_model, "none"),
        "tenant": tenants.c.name,
        "key": sa.func.coalesce(sa.cast(requests.c.api_key_id, sa.String), "none"),
        "router": sa.func.coalesce(requests.c.router, "none"),
        "none": sa.literal("all"),
    }[by]


def interval(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Mean and 95 % normal-approximation interval (clipped to [0, 1]); None below 2 values."""
    if not values:
        return None, None, None
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    half = Z95 * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


class Analytics:
    def __init__(self, engine: AsyncEngine, catalog: Catalog, reference_model: str):
        self.engine = engine
        self.catalog = catalog
        self.reference_model = reference_model

    async def summary(self, scope: Scope, span: Range, reference: str | None = None) -> dict:
        """Counts, spend, error and fallback rates, latency percentiles, and savings."""
        reference = reference or self.reference_model
        if reference not in self.catalog or not self.catalog.get(reference).priced:
            raise ValueError(f"reference: {reference!r} is not a priced catalog model")
        where = scope.where() & span.where()
        fallback = (requests.c.served_model.is_not(None)) & (
            requests.c.served_model != requests.c.chosen_model
        )
        comparable = (
            (requests.c.status == "ok")
            & requests.c.cost_usd.is_not(None)
            & requests.c.prompt_tokens.is_not(None)
            & requests.c.completion_tokens.is_not(None)
        )
        totals = sa.select(
            sa.func.count(),
            sa.func.count().filter((requests.c.status != "ok") & NOT_JUDGE_CALL),
            sa.func.count().filter(fallback),
            sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0),
            sa.func.count().filter((requests.c.status == "ok") & requests.c.cost_usd.is_(None)),
            sa.func.coalesce(sa.func.sum(requests.c.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(requests.c.completion_tokens), 0),
            sa.func.count(requests.c.ood_score),
            sa.func.count().filter(requests.c.ood_score >= FAR_FROM_TRAINING),
            sa.func.count().filter(JUDGE_CALL),
            sa.func.count().filter(JUDGE_CALL & (requests.c.status != "ok")),
            sa.func.coalesce(sa.func.sum(requests.c.cost_usd).filter(JUDGE_CALL), 0.0),
        ).where(where)
        savings = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0),
            sa.func.coalesce(sa.func.sum(requests.c.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(requests.c.completion_tokens), 0),
        ).where(where & comparable)
        latency = (
            sa.select(requests.c.latency_ms, requests.c.overhead_ms)
            .where(where)
            .order_by(requests.c.created_at.desc())
            .limit(MAX_ROWS)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(totals)).one()
            count, errors, fallbacks, spend, unpriced, prompt, completion, scored, far = row[:9]
            judged, judge_errors, judge_spend = row[9:]
            n_cmp, spend_cmp, prompt_cmp, completion_cmp = (await conn.execute(savings)).one()
            timings = (await conn.execute(latency)).all()
        info = self.catalog.get(reference)
        assert info.prompt_usd_per_token is not None and info.completion_usd_per_token is not None
        reference_cost = (
            prompt_cmp * info.prompt_usd_per_token
            + completion_cmp * info.completion_usd_per_token
            + n_cmp * info.request_usd
        )
        lat = np.array([t.latency_ms for t in timings], dtype=float)
        over = np.array([t.overhead_ms for t in timings if t.overhead_ms is not None], dtype=float)

        def pct(values: np.ndarray, q: float) -> float | None:
            return float(np.percentile(values, q)) if len(values) else None

        return {
            "range": span.describe(),
            "requests": int(count),
            "errors": int(errors),
            "error_rate": errors / (count - judged) if count > judged else None,
            "fallback_rate": fallbacks / count if count else None,
            "spend_usd": float(spend),
            "judge": {
                "requests": int(judged),
                "errors": int(judge_errors),
                "spend_usd": float(judge_spend),
            },
            "unpriced_requests": int(unpriced),
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)},
            "overhead_ms": {"p50": pct(over, 50), "p99": pct(over, 99)},
            "far_from_training": {
                "routed": int(scored),
                "far": int(far),
                "share": far / scored if scored else None,
                "ood_score_at_least": FAR_FROM_TRAINING,
            },
            "savings": {
                "reference_model": reference,
                "requests": int(n_cmp),
                "spend_usd": float(spend_cmp),
                "reference_cost_usd": float(reference_cost),
                "saved_usd": float(reference_cost - spend_cmp),
                "saved_pct": (reference_cost - spend_cmp) / reference_cost
                if reference_cost > 0
                else None,
                "method": "the same prompt and completion tokens priced at the reference model",
            },
        }

    async def spend(self, scope: Scope, span: Range, group: str, by: str) -> list[dict]:
        """Spend and requests per time bucket and dimension value."""
        if group not in GROUPS:
            raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
        if by not in DIMENSIONS:
            raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
        async with self.engine.connect() as conn:
            bucket = _bucket(conn.dialect.name, group).label("bucket")
            key = _dimension(by).label("key")
            query = (
                sa.select(
                    bucket,
                    key,
                    sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0),
                    sa.func.count(),
                )
                .select_from(requests.join(tenants, tenants.c.id == requests.c.tenant_id))
                .where(scope.where() & span.where())
                .group_by(bucket, key)
                .order_by(bucket, key)
            )
            rows = (await conn.execute(query)).all()
        return [
            {"bucket": f"{b}Z", "key": str(k), "spend_usd": float(s), "requests": int(n)}
            for b, k, s, n in rows
        ]

    async def mix(self, scope: Scope, span: Range) -> list[dict]:
        """Share of answered traffic per model and router."""
        model = requests.c.served_model
        router = sa.func.coalesce(requests.c.router, "none")
        query = (
            sa.select(
                model,
                router,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0),
            )
            .where(scope.where() & span.where() & (requests.c.status == "ok"))
            .group_by(model, router)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        total = sum(r[2] for r in rows) or 1
        out = [
            {"model": m, "router": r, "requests": int(n), "share": n / total, "spend_usd": float(s)}
            for m, r, n, s in rows
        ]
        return sorted(out, key=lambda row: -row["requests"])

    async def quality(self, scope: Scope, span: Range) -> dict[str, Any]:
        """Feedback per model and per router with 95 % intervals, and P(pass) calibration."""
        query = (
            sa.select(
                feedback.c.score,
                requests.c.served_model,
                sa.func.coalesce(requests.c.router, "none"),
                requests.c.candidates,
            )
            .join(requests, requests.c.id == feedback.c.request_id)
            .where(scope.where() & span.where())
            .limit(MAX_ROWS)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        by_model: dict[str, list[float]] = {}
        by_router: dict[str, list[float]] = {}
        pairs = []
        for score, model, router, candidates in rows:
            by_model.setdefault(model or "none", []).append(score)
            by_router.setdefault(router, []).append(score)
            chosen = next((c for c in candidates or [] if c.get("model") == model), None)
            if chosen is not None:
                pairs.append((float(chosen["p_pass"]), float(score)))

        def table(groups: dict[str, list[float]], name: str) -> list[dict]:
            out = []
            for key, scores in sorted(groups.items()):
                mean, low, high = interval(scores)
                out.append(
                    {name: key, "n": len(scores), "mean": mean, "ci_low": low, "ci_high": high}
                )
            return out

        calibration = []
        for low in np.arange(0.0, 1.0, 0.1):
            inside = [(p, s) for p, s in pairs if low <= p < low + 0.1 or (low >= 0.9 and p == 1)]
            if inside:
                calibration.append(
                    {
                        "bin_low": round(float(low), 1),
                        "bin_high": round(float(low) + 0.1, 1),
                        "n": len(inside),
                        "mean_p_pass": float(np.mean([p for p, _ in inside])),
                        "mean_feedback": float(np.mean([s for _, s in inside])),
                    }
                )
        return {
            "feedback": len(rows),
            "by_model": table(by_model, "model"),
            "by_router": table(by_router, "router"),
            "calibration": calibration,
        }

    async def curve(self, scope: Scope, span: Range, limit: int = 2000) -> list[dict]:
        """The router's cost-quality trade-off on recent auto-routed traffic: for each threshold,
        the expected cost per request and the mean P(pass) of the model it would choose."""
        query = (
            sa.select(requests.c.candidates)
            .where(
                scope.where()
                & span.where()
                & (
                    requests.c.requested_model.is_(None)
                    | (requests.c.requested_model == AUTO_MODEL)
                )
                & requests.c.candidates.is_not(None)
            )
            .order_by(requests.c.created_at.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            sets = [list(c) for (c,) in (await conn.execute(query)).all() if c]
        points = []
        for threshold in np.round(np.arange(0.05, 1.0, 0.05), 2):
            costs, passes = [], []
            for candidates in sets:
                cost = chosen_cost(candidates, float(threshold))
                pick = next(
                    (c for c in candidates if c.get("expected_cost_usd") == cost), candidates[0]
                )
                costs.append(cost)
                passes.append(float(pick["p_pass"]))
            if sets:
                points.append(
                    {
                        "threshold": float(threshold),
                        "expected_cost_usd": float(np.mean(costs)),
                        "expected_pass_rate": float(np.mean(passes)),
                    }
                )
        return points

    async def budgets(self, store: BudgetStore, shown: list[Budget]) -> list[dict]:
        """Each budget's window, projected end-of-period spend, pacing state and alerts sent."""
        out = []
        at = datetime.now(UTC)
        async with self.engine.connect() as conn:
            counts: dict[int, int] = dict(
                (
                    await conn.execute(
                        sa.select(alerts.c.budget_id, sa.func.count()).group_by(alerts.c.budget_id)
                    )
                ).all()
            )
        for budget in shown:
            window = await store.window(budget, at)
            status = window.status()
            projected = None
            if window.resets_at is not None:
                elapsed = (at - utc(window.start)).total_seconds()
                length = (utc(window.resets_at) - utc(window.start)).total_seconds()
                projected = window.spent_usd * length / elapsed if elapsed > 0 else None
            pacing = budget.pacing_state or {}
            if pacing.get("projected_spend_usd") is not None:
                projected = pacing["projected_spend_usd"]
            status["projected_end_usd"] = projected
            status["alerts_sent"] = int(counts.get(budget.id, 0))
            out.append(status)
        return out

    async def tenant_id(self, name: str) -> int | None:
        async with self.engine.connect() as conn:
            return await conn.scalar(sa.select(tenants.c.id).where(tenants.c.name == name))


def default_reference(catalog: Catalog, models: list[str]) -> str:
    """The most expensive of ``models`` (by completion, then prompt price): the router's
    models that the upstream serves now, where that is known."""
    priced = [catalog.get(m) for m in models if m in catalog and catalog.get(m).priced]
    if not priced:
        raise ValueError("no priced router model to compare with")
    best = max(priced, key=lambda i: (i.completion_usd_per_token, i.prompt_usd_per_token))
    return best.id
