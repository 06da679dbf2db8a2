"""The ping, `/v2/`: the lone pass-through upstream's own answer, or the proxy's.

With one pass-through upstream the client sees its answer (challenge rewritten to the
proxy's realm); with several, or upstreams the proxy logs in to, the proxy answers: 401
with its own bearer challenge when some pass-through upstream wants tokens, 200
otherwise. With a cache the ping also answers when the upstream cannot be reached (its
last challenge, else 200), so that cached images can still be pulled.
"""

from __future__ import annotations

import aiohttp
import structlog
from aiohttp import web

from .forward import open_upstream, respond
from .replies import API_VERSION, PROXY_SERVICE, bearer_challenge, client_base, oci_error
from .routing import PROXY, Route
from .upstream import Upstream

log = structlog.get_logger("ocimirror.proxy")


async def ping(request: web.Request) -> web.StreamResponse:
    """Answer `/v2/`: the lone pass-through upstream's own answer, or the proxy's."""
    proxy = request.app[PROXY]
    passthrough = [u for u in proxy.upstreams.values() if u.mode == "passthrough"]
    only = proxy.only
    if only is not None and only.mode == "passthrough":
        request["upstream"] = only.label
        if proxy.cache is not None and not request.headers.get("Authorization"):
            answer = await cached_ping(request, only)
            if answer is not None:
                return answer
        route = Route(only, "", "")
        try:
            resp = await open_upstream(request, route, "/v2/", scopes=frozenset())
        except (aiohttp.ClientError, TimeoutError) as e:
            if proxy.cache is None:
                raise
            return offline_ping(request, only, "unreachable", str(e) or type(e).__name__)
        if resp.status >= 500 and proxy.cache is not None:
            resp.release()
            return offline_ping(request, only, f"http_{resp.status}", f"HTTP {resp.status}")
        return await respond(request, route, resp)
    if passthrough and not request.headers.get("Authorization"):
        for u in passthrough:
            try:
                challenge = await u.challenge()
            except (aiohttp.ClientError, TimeoutError):
                if proxy.cache is None:
                    raise
                challenge = u.last_challenge  # unreachable: as last seen, for the cache
            if challenge is not None:
                realm = client_base(request) + "/_token"
                return oci_error(
                    401,
                    "UNAUTHORIZED",
                    "authentication required",
                    headers={
                        "WWW-Authenticate": f'Bearer realm="{realm}",service="{PROXY_SERVICE}"'
                    },
                )
    return web.json_response({}, headers=API_VERSION)


async def cached_ping(request: web.Request, upstream: Upstream) -> web.Response | None:
    """Answer an anonymous ping of a lone pass-through upstream as it answered the proxy's
    own (asked at most once per `CHALLENGE_TTL`): 200, or its bearer challenge with the
    proxy's realm; None when it answered otherwise (its own answer is then passed on)."""
    try:
        challenge = await upstream.challenge()
    except (aiohttp.ClientError, TimeoutError) as e:
        return offline_ping(request, upstream, "unreachable", str(e) or type(e).__name__)
    if upstream.ping_status == 200:
        return web.json_response({}, headers=API_VERSION)
    if upstream.ping_status == 401 and challenge is not None:
        return bearer_challenge(request, challenge)
    return None


def offline_ping(request: web.Request, upstream: Upstream, reason: str, error: str) -> web.Response:
    """Answer the ping of a lone pass-through upstream that failed, so that cached images
    can still be pulled: its last bearer challenge (realm: the proxy), else 200."""
    proxy = request.app[PROXY]
    proxy.metrics.upstream_errors.labels(upstream.label, reason).inc()
    log.warning("upstream failed, the ping is answered by the proxy", error=error)
    challenge = upstream.last_challenge
    if challenge is None:
        return web.json_response({}, headers=API_VERSION)
    return bearer_challenge(request, challenge)
