"""What text the service accepts, decided once at the edge for everything it may store.

- No NUL character (U+0000) anywhere: in a JSON body's strings or keys, a path or a query. A
  PostgreSQL text column cannot hold one, so a request carrying one could be answered and
  then never recorded.
- No lone surrogate (``"\\ud800"`` without its pair): it is not a character and cannot be
  encoded as UTF-8 for the upstream or the ledger.
- JSON nested at most ``MAX_JSON_DEPTH`` levels (objects and arrays): OpenAI bodies need a
  handful; deeper bodies only exhaust recursion in whatever walks them next.

Each is answered 400 ``invalid_request`` naming where the offending text is.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import InvalidRequest

MAX_JSON_DEPTH = 64
# escapes that may decode to a NUL or a surrogate; only bodies with one are walked for them
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    if _SURROGATE.search(text):
        return "a lone UTF-16 surrogate (not a character)"
    return None


def check_json(payload: Any, raw: bytes) -> None:
    """400 if the parsed body nests too deeply or holds text the service cannot store."""
    look_at_text = _SUSPECT_ESCAPE.search(raw) is not None
    stack: list[tuple[Any, str, int]] = [(payload, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidRequest(f"the request body nests more than {MAX_JSON_DEPTH} levels")
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                if look_at_text and (problem := _bad_text(key)):
                    raise InvalidRequest(f"a key at {where or 'the top'} holds {problem}")
                stack.append((item, path, depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidRequest(f"the request body nests more than {MAX_JSON_DEPTH} levels")
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        elif look_at_text and isinstance(value, str) and (problem := _bad_text(value)):
            raise InvalidRequest(f"{where or 'the body'} holds {problem}", param=where or None)


class RejectUnstorableURLs:
    """400 for a path or query that holds a NUL or is not UTF-8, before any route sees it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _url_problem(scope.get("path", ""), scope.get("query_string", b""))
            if problem is not None:
                await InvalidRequest(problem).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _url_problem(path: str, query: bytes) -> str | None:
    if "\x00" in path:
        return "the path holds a NUL character"
    try:
        path.encode()
    except UnicodeEncodeError:
        return "the path is not UTF-8"
    decoded = unquote_to_bytes(query.replace(b"+", b" "))
    if b"\x00" in decoded:
        return "the query holds a NUL character"
    try:
        decoded.decode()
    except UnicodeDecodeError:
        return "the query is not UTF-8"
    return None
