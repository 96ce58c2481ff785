"""One chat request from decision to answer: plan the models to try, call them with retries and
fallbacks, price the answer, and keep the record.

Planning: ``switchboard/auto`` scores every candidate the router knows (allowed, served by a
configured upstream, circuit not open) and orders them: the decision first, then the other
candidates that clear the threshold, cheapest first, then the rest, most likely to pass first
(under the value rule: by expected net value).
An explicit model is tried alone, or with OpenRouter's ``models`` list as its ordered fallbacks.

Execution: each model gets ``retries`` more attempts on retryable failures (429, 5xx, timeouts,
connection errors, malformed answers), waiting Retry-After or exponential backoff with jitter;
then the next model in the plan.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.availability import Availability, says_not_served
from service.capabilities import Needs, needs, routing_hint, unmet
from service.catalog import Catalog, canonical_model_id
from service.config import Settings
from service.errors import (
    APIError,
    InvalidRequest,
    NotFound,
    RateLimited,
    RequestTimeout,
    Unavailable,
    Unroutable,
    UpstreamFailed,
)
from service.journal import Journal
from service.prompts import prompt_text
from service.providers.base import AUTH, BAD_REQUEST, RATE_LIMITED, TIMEOUT, Provider, UpstreamError
from service.providers.replay import HOW_TO_CONFIGURE, NoRecording, ReplayProvider
from service.providers.resilience import CircuitBreaker, ConcurrencyLimit, backoff_delay
from service.record import RequestRecord
from service.routing.decision import NoCandidateError, decide, expected_costs
from service.routing.exploration import explore
from service.routing.heuristic import HeuristicRouter
from service.routing.learned import LearnedRouter
from service.schemas import AUTO_MODEL, ChatRequest, RoutingControls
from service.spend_control import SpendControl, Steering

T = TypeVar("T")
log = logging.getLogger("switchboard")


@dataclass
class Candidates:
    """The models a request may go to, which of them its rule may choose, and those left out."""

    models: list[str]
    decidable: list[bool]
    left_out: list[dict[str, Any]]


@dataclass
class Plan:
    order: list[str]
    auto: bool


@dataclass
class RouteContext:
    """What shapes one auto-routed decision besides the request's controls."""

    steering: Steering | None = None
    max_output_tokens: int | None = None
    arm: str | None = None  # "<experiment>:<arm>" when an experiment assigned the router
    arm_router: str | None = None  # champion, challenger or heuristic
    needs: Needs | None = None  # what the request needs of a model (service.capabilities)
    hint: str = ""  # the request's tools and answer format, embedded with its prompt


class Gateway:
    """Routing, upstream calls and their resilience, shared by all requests of one process."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        router: LearnedRouter,
        providers: list[Provider],
        on_upstream_error: Callable[[str, str], None] | None = None,
        spend: SpendControl | None = None,
        challenger: LearnedRouter | None = None,
        availability: Availability | None = None,
        journal: Journal | None = None,
    ):
        self.journal = journal
        self.availability = availability or Availability.unknown()
        self._persisting: set[asyncio.Task[None]] = set()
        self.spend = spend
        self.challenger = challenger
        self.on_upstream_error = on_upstream_error or (lambda model, kind: None)
        self.settings = settings
        self.catalog = catalog
        self.router = router
        self.heuristic = HeuristicRouter()
        self.providers = providers
        self.breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_cooldown_s,
            settings.breaker_window_s,
            settings.breaker_failure_ratio,
        )
        self.limits = {
            p.name: ConcurrencyLimit(
                settings.max_concurrency_per_provider, settings.max_queue_per_provider
            )
            for p in providers
        }

    # -- planning ---------------------------------------------------------------------------

    def provider_for(self, model: str) -> Provider | None:
        return next((p for p in self.providers if p.serves(model)), None)

    def _replay(self) -> ReplayProvider | None:
        return next((p for p in self.providers if isinstance(p, ReplayProvider)), None)

    def calibrated(self, model: str) -> bool:
        """Whether the router's scores of ``model`` rest on enough graded prompts."""
        return self.router.graded_prompts(model) >= self.settings.calibrated_min_prompts

    def candidates(
        self,
        messages: list[dict[str, Any]],
        controls: RoutingControls,
        tenant: object = None,
        need: Needs | None = None,
    ) -> Candidates:
        """The models this request may be routed to: the router's (or those ``allowed_models``
        names), served by a configured upstream and listed by it now, circuit shut, recorded
        (replay); which of them the rule may choose (uncalibrated ones: by the policy); and the
        ones left out, with why."""
        router = self.router
        opted_in = bool(controls.allowed_models)
        if controls.allowed_models:
            named = list(dict.fromkeys(canonical_model_id(m) for m in controls.allowed_models))
            missing = [m for m in named if m not in self.catalog]
            if missing:
                raise Unroutable(
                    f"allowed_models with no catalog entry: {', '.join(missing)} (GET /v1/models "
                    "lists the catalog; switchboard models sync adds what the upstream lists)",
                    param="switchboard.allowed_models",
                )
            unknown = [m for m in named if m not in router.models]
            if unknown and not router.open:
                raise Unroutable(
                    f"allowed_models the router cannot route to: {', '.join(unknown)}",
                    param="switchboard.allowed_models",
                )
            pool = named
        else:
            pool = list(router.models)
            if router.open:  # models to explore on their prior (SWITCHBOARD_EXPLORE_MODELS)
                extra = self.settings.explore_models
                pool += [m for m in extra if m in self.catalog and m not in router.models]
        left_out: list[dict[str, Any]] = []
        open_circuits = set(self.breaker.open_models(tenant))
        policy = self.settings.uncalibrated_policy
        models = []
        for model in pool:
            reason = None
            if self.provider_for(model) is None:
                reason = "no configured upstream serves it"
            elif (not_served := self.availability.unavailable(model)) is not None:
                reason = not_served
            elif model in open_circuits:
                reason = "its circuit is open after repeated failures"
            elif need is not None and model in self.catalog:
                reason = unmet(self.catalog.get(model), need)
            elif policy == "exclude" and not opted_in and not self.calibrated(model):
                reason = f"uncalibrated ({router.graded_prompts(model)} graded prompts)"
            if reason is None:
                models.append(model)
            else:
                left_out.append({"model": model, "reason": reason})
        replay = self._replay()
        if replay is not None:
            recorded = replay.models_for(messages)
            models = [m for m in models if m in recorded]
            if not models:
                raise Unavailable(
                    "replay upstream: no recorded answer to this prompt; " + HOW_TO_CONFIGURE
                )
        if not models:
            reasons = "; ".join(f"{e['model']}: {e['reason']}" for e in left_out[:5])
            unsupported = need is not None and any(
                e["reason"].startswith(("does not support", "takes no", "its context"))
                for e in left_out
            )
            if unsupported:
                assert need is not None
                raise InvalidRequest(
                    f"no candidate model supports what this request uses ({need.describe()}, "
                    f"{need.context_tokens:,} tokens of context): {reasons}",
                    code="unsupported_request",
                )
            raise Unavailable(f"no upstream can serve any candidate model ({reasons})")
        decidable = [opted_in or policy != "explore" or self.calibrated(m) for m in models]
        if not any(decidable):  # nothing calibrated is served: their priors are all there is
            decidable = [True] * len(models)
        return Candidates(models, decidable, left_out)

    def route(
        self,
        messages: list[dict[str, Any]],
        controls: RoutingControls,
        record: RequestRecord,
        context: RouteContext | None = None,
    ) -> list[str]:
        """Score the candidates, decide (exploring at the configured rate), and return the
        ordered models to try."""
        context = context or RouteContext()
        steering = context.steering
        prompt = prompt_text(messages) + context.hint
        champion = self.router  # one version for the whole decision, even if pickup swaps it
        found = self.candidates(messages, controls, record.principal.tenant_id, context.needs)
        record.left_out = found.left_out or None
        models, decidable = found.models, np.array(found.decidable)
        features = champion.featurizer().transform([prompt])
        near = champion.nearness(features)
        record.ood_score = None if near is None else float(near.score[0])
        answer = champion.answer_tokens(features, models)
        cost = expected_costs([prompt], models, self.catalog, context.max_output_tokens, answer)[0]
        if steering is not None and steering.cheaper_half:
            keep = cheaper_half(cost)
            models = [m for m, k in zip(models, keep, strict=True) if k]
            cost, decidable = cost[keep], decidable[keep]
        which = {"learned": "champion", None: "champion"}.get(controls.router, controls.router)
        if controls.router is None and context.arm_router is not None:
            which, record.arm = context.arm_router, context.arm
        if which == "heuristic":
            p_pass = self.heuristic.p_pass([prompt], models, cost[None, :])[0]
            router_name, version = self.heuristic.name, self.heuristic.version
        else:
            learned = self.challenger if which == "challenger" and self.challenger else champion
            shared, seen = (features, near) if learned is champion else (None, None)
            p_pass = learned.p_pass(
                [prompt], models, features=shared, catalog=self.catalog, nearness=seen
            )[0]
            router_name, version = learned.name, learned.version
        threshold = controls.quality_threshold
        if threshold is None:
            threshold = self.settings.default_threshold
        if threshold is None:
            threshold = champion.default_threshold
        value = controls.answer_value_usd
        if steering is not None and steering.threshold_cap is not None:
            # a budget under pressure steers by the threshold rule, whatever rule was asked for
            threshold, value = min(threshold, steering.threshold_cap), None
        if steering is not None and steering.reasons:
            record.spend_control = ", ".join(steering.reasons)[:300]
        rule_models = [m for m, ok in zip(models, decidable, strict=True) if ok]
        try:
            decision = decide(
                rule_models,
                p_pass[decidable],
                cost[decidable],
                threshold,
                router_name,
                None,
                controls.max_cost_usd,
                value,
            )
        except NoCandidateError as error:
            raise Unroutable(str(error), param="switchboard.max_cost_usd") from None
        record.router, record.router_version = router_name, version
        record.threshold, record.answer_value_usd = decision.threshold, decision.answer_value_usd
        record.candidates = [
            {
                "model": model,
                "p_pass": float(p_pass[j]),
                "expected_cost_usd": None if math.isnan(cost[j]) else float(cost[j]),
                "graded_prompts": champion.graded_prompts(model),
                "calibrated": self.calibrated(model),
                "decidable": bool(decidable[j]),
            }
            for j, model in enumerate(models)
        ]
        record.rule = decision.rule
        within_cap = [
            j
            for j in range(len(models))
            if controls.max_cost_usd is None or cost[j] <= controls.max_cost_usd
        ]
        considered = [models[j] for j in within_cap if not math.isnan(cost[j])]
        rate = self.settings.exploration_rate
        if record.arm is not None and not self.settings.experiment_exploration:
            rate = 0.0  # an arm measures its router, not its router diluted by random picks
        chosen, propensity = explore(record.id, decision.model, considered, rate)
        record.explored = chosen != decision.model
        index = models.index(chosen)
        record.chosen_model, record.p_pass = chosen, float(p_pass[index])
        record.propensity = propensity
        if not math.isnan(cost[index]):
            record.expected_cost_usd = float(cost[index])
        ruled = [j for j in within_cap if decidable[j]]
        if value is not None:  # fallbacks by expected net value
            fallbacks = sorted(
                ruled,
                key=lambda j: math.inf if math.isnan(cost[j]) else cost[j] - value * p_pass[j],
            )
        else:
            clearing = sorted((j for j in ruled if p_pass[j] >= threshold), key=lambda j: cost[j])
            rest = sorted((j for j in ruled if p_pass[j] < threshold), key=lambda j: -p_pass[j])
            fallbacks = clearing + rest
        exploring_only = [j for j in within_cap if not decidable[j]]  # uncalibrated: last
        order = [chosen, decision.model] + [models[j] for j in fallbacks + exploring_only]
        return list(dict.fromkeys(order))

    def plan(
        self,
        request: ChatRequest,
        controls: RoutingControls,
        record: RequestRecord,
        context: RouteContext | None = None,
    ) -> Plan:
        record.requested_model = request.model or (request.models[0] if request.models else None)
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        if request.auto:
            context = context or RouteContext()
            limits = (request.max_completion_tokens or 0, request.max_tokens or 0)
            context.max_output_tokens = max(limits) or None
            body = request.upstream_body()
            context.needs = needs(body, prompt_text(messages))
            context.hint = routing_hint(body)
            return Plan(self.route(messages, controls, record, context), auto=True)
        if request.model == AUTO_MODEL:
            raise InvalidRequest(
                "use either model switchboard/auto or a models list", param="models"
            )
        named = ([request.model] if request.model else []) + list(request.models or [])
        order = list(dict.fromkeys(canonical_model_id(m) for m in named))
        for model in order:
            if model not in self.catalog:
                raise NotFound(
                    f"model {model!r} is not in the catalog (GET /v1/models lists it)",
                    param="model",
                    code="model_not_found",
                )
            if self.provider_for(model) is None:
                raise Unavailable(
                    f"no configured upstream serves {model}"
                    + ("; " + HOW_TO_CONFIGURE if self._replay() else "")
                )
        record.chosen_model = order[0]
        return Plan(order, auto=False)

    # -- execution --------------------------------------------------------------------------

    async def attempt_all(
        self,
        plan: Plan,
        record: RequestRecord,
        call: Callable[[Provider, str], Awaitable[T]],
        body: dict[str, Any],
    ) -> tuple[T, str]:
        """Try the planned models in order, each with retries; the first success wins.

        Before a model's first attempt its worst-case cost is held on the budgets it counts
        against (402 if one has no room); the hold is released if the model fails, and settled
        with the ledger row if it answers.
        """
        last: UpstreamError | None = None
        tenant, request = record.principal.tenant_id, record.id
        for model in plan.order:
            if not self.breaker.allows(model, tenant, request):
                record.fallbacks.append({"model": model, "error": "circuit_open"})
                continue
            outcome = "released"  # for the breaker: this request's end on this model
            try:
                result, last = await self._attempts(model, record, call, body)
                if result is not None:
                    outcome = "success"
                    for candidate in record.candidates or []:  # the served model's P(pass)
                        if candidate["model"] == model:
                            record.p_pass = candidate["p_pass"]
                    return result[0], model
                assert last is not None
                if last.kind != BAD_REQUEST:  # the upstream failed, not the request
                    outcome = "failure"
            finally:
                if outcome == "success":
                    self.breaker.success(model, tenant, request)
                elif outcome == "failure":
                    self.breaker.failure(model, tenant, request)
                else:  # a budget refused it, or the upstream refused the request itself
                    self.breaker.release(model, tenant, request)
            if record.hold is not None and self.spend is not None:
                hold, record.hold = record.hold, None
                self.spend.release(hold)
            record.fallbacks.append(
                {
                    "model": model,
                    "error": last.kind,
                    "status": last.status,
                    "message": last.message[:300],
                }
            )
        raise final_error(last, plan)

    async def _attempts(
        self,
        model: str,
        record: RequestRecord,
        call: Callable[[Provider, str], Awaitable[T]],
        body: dict[str, Any],
    ) -> tuple[tuple[T] | None, UpstreamError | None]:
        """One model's attempts (its hold first, then retries on retryable failures): the
        result (as a 1-tuple), or None and the last error."""
        settings = self.settings
        provider = self.provider_for(model)
        assert provider is not None
        if self.spend is not None:
            record.hold = await self.spend.hold(record, model, body)
        last: UpstreamError | None = None
        for attempt in range(1, settings.retries + 2):
            record.attempts += 1
            if self.journal is not None:  # a call about to be made leaves a row, whatever
                self.journal.attempt(record.row(), model)
            started = time.perf_counter()
            try:
                result = await call(provider, model)
            except UpstreamError as error:
                record.upstream_ms += (time.perf_counter() - started) * 1000
                last = error
                self.on_upstream_error(model, error.kind)
                if error.kind == BAD_REQUEST and says_not_served(error.message):
                    self._not_served(model, error.message)
                if not error.retryable or attempt > settings.retries:
                    break
                delay = backoff_delay(
                    attempt,
                    error.retry_after_s,
                    settings.backoff_base_s,
                    settings.backoff_max_s,
                    settings.max_retry_after_s,
                )
                if delay is None:
                    break
                await asyncio.sleep(delay)
                record.upstream_ms += delay * 1000
                continue
            record.upstream_ms += (time.perf_counter() - started) * 1000
            return (result,), None
        return None, last

    def _not_served(self, model: str, message: str) -> None:
        """An answer said the upstream does not serve ``model``: out of routing now, and in the
        ledger for the other replicas."""
        if self.availability.mark(model, message):
            task = asyncio.get_running_loop().create_task(self.availability.persist(model))
            self._persisting.add(task)
            task.add_done_callback(self._persisted)

    def _persisted(self, task: asyncio.Task[None]) -> None:
        self._persisting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not record an unavailable model: %s", task.exception())


def cheaper_half(cost: np.ndarray) -> np.ndarray:
    """Which candidates' expected cost is at most the median (unpriced ones dropped)."""
    priced = ~np.isnan(cost)
    if not priced.any():
        return np.ones(len(cost), dtype=bool)
    return priced & (cost <= np.median(cost[priced]))


def final_error(last: UpstreamError | None, plan: Plan) -> APIError:
    """What the caller gets when every planned model failed."""
    if last is None:
        return Unavailable("every candidate model's circuit is open after repeated failures")
    if isinstance(last, NoRecording):
        return Unavailable(last.message)
    if last.kind == TIMEOUT:
        return RequestTimeout(f"the upstream timed out ({last.message})")
    if last.kind == RATE_LIMITED:
        return RateLimited(
            f"the upstream is rate limiting ({last.message})", retry_after_s=last.retry_after_s or 1
        )
    if last.kind == BAD_REQUEST and not plan.auto and len(plan.order) == 1:
        return InvalidRequest(
            f"the upstream refused the request: {last.message}", code="upstream_bad_request"
        )
    if last.kind == AUTH:
        return UpstreamFailed(
            "the upstream refused switchboard's provider key; check its configuration"
        )
    return UpstreamFailed(f"every planned model failed; last error: {last.message}")
