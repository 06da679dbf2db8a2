"""What a client gets for an upstream's error answer: its OCI codes, the proxy's words.

An upstream's error body names its own repositories (the prefix), hosts and URLs, and its
messages are its own text: none of it goes to the client. `error_body` keeps the known
OCI codes of the answer (or one from its status) with short messages of the proxy's own;
what the upstream said is logged at debug level.
"""

from __future__ import annotations

import json

import aiohttp
import structlog
from aiohttp import web

log = structlog.get_logger("ocimirror.proxy")

#: The short message an upstream's error code is answered with (its own text never is).
ERROR_MESSAGES = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "DIGEST_INVALID": "invalid digest",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "MANIFEST_INVALID": "manifest invalid",
    "NAME_INVALID": "invalid repository name",
    "NAME_UNKNOWN": "repository name not known to registry",
    "TAG_INVALID": "manifest tag did not match URI",
    "PAGINATION_NUMBER_INVALID": "invalid number of results requested",
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "UNSUPPORTED": "The operation is unsupported.",
    "TOOMANYREQUESTS": "too many requests",
    "UNAVAILABLE": "the upstream registry is unavailable",
}
#: The bytes of an upstream's error body read to find its codes.
ERROR_BODY_LIMIT = 64 * 1024


async def error_body(request: web.Request, resp: aiohttp.ClientResponse) -> bytes:
    """The body a client gets for an upstream's error answer: its OCI codes (known ones)
    with the proxy's own short messages, never the upstream's text, names or URLs (logged
    at debug level instead)."""
    codes: list[str] = []
    if request.method != "HEAD":
        raw = b""
        try:
            while len(raw) < ERROR_BODY_LIMIT:  # read() gives what has arrived: up to EOF
                chunk = await resp.content.read(ERROR_BODY_LIMIT - len(raw))
                if not chunk:
                    break
                raw += chunk
            doc = json.loads(raw)
        except (ValueError, RecursionError, aiohttp.ClientError, TimeoutError):
            doc = None
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list):
            codes = [
                e["code"] for e in errors if isinstance(e, dict) and e.get("code") in ERROR_MESSAGES
            ]
        log.debug(
            "upstream error answer",
            status=resp.status,
            path=request.path,
            said=raw[:500].decode(errors="replace"),
        )
    if not codes:
        codes = [
            _STATUS_CODES.get(resp.status, "UNAVAILABLE" if resp.status >= 500 else "UNSUPPORTED")
        ]
    return json.dumps(
        {"errors": [{"code": c, "message": ERROR_MESSAGES[c]} for c in dict.fromkeys(codes)]}
    ).encode()


_STATUS_CODES = {
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
    429: "TOOMANYREQUESTS",
}
