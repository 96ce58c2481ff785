"""Request-body reading shared by the handlers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from service.api.text_rules import MAX_JSON_DEPTH, check_json
from service.errors import InvalidRequest, Unavailable

FLUSH_TIMEOUT_S = 5.0
# JSON schemas of the request bodies the handlers parse themselves (``documented_body``), for
# the OpenAPI document's components: the handlers keep their own parsing and errors
BODY_SCHEMAS: dict[str, Any] = {}


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the route's JSON body (what clients and the
    fuzz suite read from /openapi.json), without FastAPI parsing it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    BODY_SCHEMAS.update(schema.pop("$defs", {}))
    BODY_SCHEMAS[model.__name__] = schema
    reference = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}
    }


async def json_body(request: Request) -> Any:
    """The parsed JSON body, or 400 naming the problem (the size cap is the middleware's; what
    text is accepted, service.api.text_rules)."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        payload = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidRequest(f"the request body nests more than {MAX_JSON_DEPTH} levels") from None
    check_json(payload, raw)
    return payload


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def flushed(request: Request) -> None:
    """Wait until this process's queued ledger rows are written (reads of the caller's own
    requests must see them); 503 ``ledger_unavailable`` if that takes longer than
    FLUSH_TIMEOUT_S (the ledger cannot be written: the rows wait, the read would miss them)."""
    try:
        await asyncio.wait_for(asyncio.shield(request.app.state.recorder.flush()), FLUSH_TIMEOUT_S)
    except TimeoutError:
        raise Unavailable(
            "the ledger cannot be written just now, so this process's latest requests are not "
            "in it yet; retry shortly",
            code="ledger_unavailable",
            retry_after_s=FLUSH_TIMEOUT_S,
        ) from None
