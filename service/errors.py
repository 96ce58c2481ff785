"""Errors clients see, in the OpenAI shape ``{"error": {message, type, param, code}}``.

The hierarchy maps one-to-one to HTTP statuses and stable ``code`` strings:

- ``InvalidRequest`` 400 ``invalid_request`` (malformed JSON, wrong types, empty messages)
- ``Unauthorized`` 401 ``invalid_api_key``; ``Forbidden`` 403 ``forbidden``
- ``PaymentRequired`` 402 ``budget_exceeded`` (a hard cap), ``unpriced_model`` (an unpriced
  model under a budget with the "block" rule), ``spend_spike`` (an open spend breaker)
- ``NotFound`` 404 (``model_not_found``, ``request_not_found``)
- ``RequestTimeout`` 408 ``upstream_timeout``
- ``PayloadTooLarge`` 413 ``request_too_large``
- ``Unroutable`` 422 ``no_candidate_model`` (the constraints leave no model)
- ``RateLimited`` 429 ``rate_limited`` / ``queue_full``, with Retry-After
- ``UpstreamFailed`` 502 ``upstream_error``
- ``Unavailable`` 503 ``no_upstream`` (nothing can serve the request, e.g. replay has no recording),
  ``ledger_unavailable`` (a budget applies and its hold cannot be written, or a read must wait
  for rows that cannot be written), with Retry-After
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi.responses import JSONResponse

_HEADER_UNSAFE = re.compile(r"[^\x20-\x7e]")


def header_value(text: str) -> str:
    """``text`` as an HTTP header value: printable ASCII as it is, anything else (non-ASCII
    tenant names, line breaks) percent-encoded as UTF-8 (RFC 3986), so that no value can
    break the response or split it."""
    if _HEADER_UNSAFE.search(text) is None:
        return text
    return quote(text, safe=" !\"#$&'()*+,/:;<=>?@[]^`{|}~")


def header_values(headers: dict[str, str]) -> dict[str, str]:
    return {name: header_value(value) for name, value in headers.items()}


class APIError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code:
            self.code = code
        self.retry_after_s = retry_after_s
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        merged = {**(headers or {}), **self.headers}
        if self.retry_after_s is not None:
            merged["Retry-After"] = str(max(1, round(self.retry_after_s)))
        return JSONResponse(self.body(), status_code=self.status, headers=header_values(merged))


class InvalidRequest(APIError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(APIError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class PaymentRequired(APIError):
    status, type, code = 402, "insufficient_quota", "budget_exceeded"


class Forbidden(APIError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(APIError):
    status, type, code = 404, "invalid_request_error", "not_found"


class RequestTimeout(APIError):
    status, type, code = 408, "timeout_error", "upstream_timeout"


class PayloadTooLarge(APIError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class Unroutable(APIError):
    status, type, code = 422, "invalid_request_error", "no_candidate_model"


class RateLimited(APIError):
    status, type, code = 429, "rate_limit_error", "rate_limited"


class UpstreamFailed(APIError):
    status, type, code = 502, "upstream_error", "upstream_error"


class Unavailable(APIError):
    status, type, code = 503, "service_unavailable", "no_upstream"
