"""Request-body reading shared by the handlers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from service.errors import InvalidRequest


async def json_body(request: Request) -> Any:
    """The parsed JSON body, or 400 naming the problem (the size cap is the middleware's)."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None


async def flushed(request: Request) -> None:
    """Wait until this process's queued ledger rows are written (reads of the caller's own
    requests must see them)."""
    await request.app.state.recorder.flush()
