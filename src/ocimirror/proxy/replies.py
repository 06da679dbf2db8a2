"""The proxy's own answers: OCI errors, the write refusal, its challenge, placeholder tokens.

Error answers carry an OCI code and a short message of the proxy's own: never an
upstream's host, prefix, URL or error text (those go to the log).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..auth.challenge import Challenge
from .clientauth import CHALLENGE

#: The token handed out when the upstream wants none; never forwarded upstream.
ANONYMOUS_TOKEN = "ocimirror-proxy-anonymous"
#: The `service` of the proxy's own challenge (several upstreams behind one ping).
PROXY_SERVICE = "ocimirror-proxy"
API_VERSION = {"Docker-Distribution-Api-Version": "registry/2.0"}


def oci_error(
    status: int,
    code: str,
    message: str,
    *,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Return an OCI distribution error answer: `{"errors": [{code, message, detail}]}`."""
    err: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        err["detail"] = detail
    return web.json_response(
        {"errors": [err]}, status=status, headers={**API_VERSION, **(headers or {})}
    )


def unsupported(method: str) -> web.Response:
    """Return the 405 every write method gets: the proxy is pull-only."""
    return oci_error(
        405,
        "UNSUPPORTED",
        "The operation is unsupported.",
        detail=f"this registry proxy is pull-only: {method} is not allowed",
        headers={"Allow": "GET, HEAD"},
    )


def unauthorized() -> web.Response:
    """Return the 401 a client without valid credentials for the proxy gets."""
    return oci_error(
        401,
        "UNAUTHORIZED",
        "authentication required",
        headers={"WWW-Authenticate": CHALLENGE},
    )


def anonymous_token() -> web.Response:
    """Return a placeholder token for an upstream that needs none."""
    issued = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return web.json_response(
        {
            "token": ANONYMOUS_TOKEN,
            "access_token": ANONYMOUS_TOKEN,
            "expires_in": 3600,
            "issued_at": issued,
        }
    )


def client_base(request: web.Request) -> str:
    """Return the proxy's base URL as the client reached it (honouring X-Forwarded-*)."""
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    return f"{proto or request.scheme}://{host or request.host}"


def quote(value: str) -> str:
    """Quote a challenge parameter's value (backslashes and double quotes escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def bearer_challenge(request: web.Request, challenge: Challenge) -> web.Response:
    """Return a 401 with an upstream's bearer challenge, its realm the proxy's `/_token`."""
    params = f'realm="{client_base(request)}/_token"'
    if challenge.service:
        params += f',service="{quote(challenge.service)}"'
    return oci_error(
        401,
        "UNAUTHORIZED",
        "authentication required",
        headers={"WWW-Authenticate": f"Bearer {params}"},
    )
