"""Who is calling: a tenant's API key (``Authorization: Bearer sb-...``) or the admin key."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from service.errors import Forbidden, Unauthorized
from service.ledger import Principal

LOCAL_TENANT = "local"
ADMIN_TENANT = "admin"


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def from_loopback(request: Request) -> bool:
    """Whether the connection came from this machine's loopback interface."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def authenticate(request: Request) -> Principal:
    """The caller's principal; 401 for a missing or unknown key. With auth disabled, a caller
    on a loopback connection needs no key (and is the local tenant); any other connection
    still does, however the service was started (uvicorn directly, a container)."""
    state = request.app.state
    if state.settings.auth_disabled and from_loopback(request):
        return state.local_principal
    token = bearer(request)
    if token is None:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    admin_key = state.settings.admin_key
    if admin_key is not None and hmac.compare_digest(token, admin_key.get_secret_value()):
        return state.admin_principal
    principal = await state.ledger.authenticate(token)
    if principal is None:
        raise Unauthorized("invalid API key")
    return principal


async def authenticate_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if not principal.admin:
        raise Forbidden("this route needs the admin key")
    return principal
