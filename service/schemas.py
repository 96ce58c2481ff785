"""Wire models: what the API accepts. Unknown OpenAI fields pass through to the upstream.

Types are strict on the wire: a boolean is not an integer (``max_tokens: true`` is refused), a
string is not a boolean (``stream: "yes"``), and numbers are finite. Header controls, which
arrive as text, are the one place strings are parsed into numbers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from service.errors import Forbidden, InvalidRequest

AUTO_MODEL = "switchboard/auto"


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class RoutingControls(BaseModel):
    """Per-request routing controls (body ``switchboard`` object or ``x-switchboard-*`` headers)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    quality_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # what a passing answer is worth to the caller: switches to the value rule
    answer_value_usd: float | None = Field(None, gt=0.0, le=1e6)
    allowed_models: list[str] | None = Field(None, min_length=1)
    max_cost_usd: float | None = Field(None, ge=0.0)
    router: Literal["learned", "champion", "challenger", "heuristic"] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> RoutingControls:
        if self.quality_threshold is not None and self.answer_value_usd is not None:
            raise ValueError(
                "give quality_threshold (threshold rule) or answer_value_usd (value rule), not both"
            )
        return self


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str | None = Field(None, min_length=1)
    models: list[str] | None = Field(None, min_length=1)  # OpenRouter's ordered fallback list
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=128)  # answers; priced, recorded and held for all
    user: str | None = Field(None, max_length=200)
    switchboard: RoutingControls | None = None

    @field_validator("messages")
    @classmethod
    def _some_content(cls, messages: list[Message]) -> list[Message]:
        if not any(m.content or m.model_extra for m in messages):
            raise ValueError("every message is empty")
        return messages

    @property
    def auto(self) -> bool:
        """Whether the router chooses the model (``switchboard/auto`` or no model at all)."""
        return self.model in (None, AUTO_MODEL) and not self.models

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def upstream_body(self) -> dict[str, Any]:
        """The body to send upstream: what the caller sent (its explicit nulls too, such as an
        assistant tool-call turn's ``content: null``), without switchboard's own fields."""
        return self.model_dump(exclude_unset=True, exclude={"switchboard", "models", "model"})


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    messages: list[Message] | None = Field(None, min_length=1)
    prompt: str | None = Field(None, min_length=1)
    switchboard: RoutingControls | None = None


class PassthroughRequest(BaseModel):
    """POST /v1/embeddings, /v1/completions and /v1/responses: the fields switchboard reads
    (the rest pass through to the upstream unchecked)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1)
    input: str | list[Any] | None = None  # embeddings, responses
    prompt: str | list[Any] | None = None  # legacy completions
    instructions: str | None = None  # responses
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    switchboard: RoutingControls | None = None


class KeyRequest(BaseModel):
    """POST /v1/admin/keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    tenant: str = Field(min_length=1, max_length=200)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    request_id: str = Field(min_length=1, max_length=64)
    score: float | None = Field(None, ge=0.0, le=1.0)
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(None, max_length=10_000)
    source: Literal["user", "judge"] = "user"  # a person, or an LLM judge grading the answer

    def value(self) -> float:
        if (self.score is None) == (self.thumbs is None):
            raise InvalidRequest(
                "give exactly one of score (0 to 1) or thumbs (up/down)", param="score"
            )
        if self.score is not None:
            return self.score
        return 1.0 if self.thumbs == "up" else 0.0


def _message(error: Any) -> str:
    """A validation error's message; a validator's own words without pydantic's prefix."""
    return str(error["msg"]).removeprefix("Value error, ")


def parse(model: type[BaseModel], payload: Any) -> Any:
    """Validate ``payload`` or raise InvalidRequest naming the first offending field."""
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = _message(first)
        raise InvalidRequest(f"{param}: {message}" if param else message, param=param) from None


def controls_from_headers(headers: Any) -> RoutingControls | None:
    """Routing controls given as ``x-switchboard-*`` request headers."""
    values: dict[str, Any] = {}
    if (threshold := headers.get("x-switchboard-quality-threshold")) is not None:
        values["quality_threshold"] = threshold
    if (value := headers.get("x-switchboard-answer-value-usd")) is not None:
        values["answer_value_usd"] = value
    if (allowed := headers.get("x-switchboard-allowed-models")) is not None:
        values["allowed_models"] = [m.strip() for m in allowed.split(",") if m.strip()]
    if (cap := headers.get("x-switchboard-max-cost-usd")) is not None:
        values["max_cost_usd"] = cap
    if (router := headers.get("x-switchboard-router")) is not None:
        values["router"] = router
    if not values:
        return None
    try:
        return RoutingControls.model_validate(values, strict=False)  # header values are text
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:  # a rule over several headers
            raise InvalidRequest(_message(first)) from None
        field = str(first["loc"][0]).replace("_", "-")
        raise InvalidRequest(f"x-switchboard-{field}: {first['msg']}", param=field) from None


PURPOSES = ("judge",)  # what x-switchboard-purpose may say


def purpose_from_headers(headers: Any, admin: bool) -> str | None:
    """The ``x-switchboard-purpose`` request header: ``judge`` tags the LLM judge's own calls
    (kept out of tenants' error rates), so only the admin key may send it."""
    purpose = headers.get("x-switchboard-purpose")
    if purpose is None:
        return None
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"x-switchboard-purpose: {purpose[:40]!r} is not one of {', '.join(PURPOSES)}",
            param="x-switchboard-purpose",
        )
    if not admin:
        raise Forbidden(
            f"x-switchboard-purpose {purpose!r} is reserved for the admin key (the judge)",
            param="x-switchboard-purpose",
        )
    return str(purpose)


def merge_controls(
    body: RoutingControls | None, headers: RoutingControls | None
) -> RoutingControls:
    """Body controls win over header controls, field by field (the rule as a whole: a body
    threshold or answer value replaces either one from the headers)."""
    merged = (headers or RoutingControls()).model_dump(exclude_none=True)
    from_body = (body or RoutingControls()).model_dump(exclude_none=True)
    if {"quality_threshold", "answer_value_usd"} & from_body.keys():
        merged.pop("quality_threshold", None)
        merged.pop("answer_value_usd", None)
    merged.update(from_body)
    return RoutingControls.model_validate(merged)
