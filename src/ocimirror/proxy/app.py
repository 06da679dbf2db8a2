"""The aiohttp application of `ocimirror proxy`: a pull-only registry under its own name.

Routes (each answered by a module of its own):

- `/v2/` answers the ping (`ping`).
- `/v2/NAME/{manifests,blobs,tags,referrers}/...` (GET, HEAD), parsed strictly from the
  raw path (`paths`) and routed to an upstream (`routing`: containerd's `?ns=`, else a
  first path component naming an upstream, else the default upstream), sent there
  (`forward`) and answered back in the client's names (`rewrite`: `Location`, `Link`,
  the bearer challenge, the `name` of a tag list). Blob redirects to other hosts pass
  through unless `stream_blobs`. Manifests and blobs go through the pull-through cache
  when there is one (`pullthrough`, `cachedblobs`, deciding by `policy`).
- `/v2/_catalog`: the default upstream's repositories under its prefix (`handlers`).
- `/_token`, `/_token/NAME` (GET, and the OAuth2 POST form): token requests forwarded to
  the upstream's real realm, scopes mapped to its names (`tokens`).
- POST, PUT, PATCH and DELETE anywhere but `/_token`: 405 `UNSUPPORTED`, nothing sent on.
- `/metrics`, `/healthz`; any other path whose segments are repository path components
  redirects a browser to the upstream's page (`handlers`).

Error answers carry an OCI code and a short message of the proxy's own (`replies`): never
an upstream's host, prefix, URL or error text (those go to the log). The middleware here
turns upstream failures into such answers and counts every answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web

from ..errors import AuthError, NotFound, OcimirrorError, RateLimited, RegistryError, Unreachable
from .cache import ProxyCache
from .cachestore import open_store
from .forward import RETRY_AFTER_5XX
from .handlers import handle_health, handle_metrics, handle_other, handle_v2
from .metrics import ProxyMetrics
from .paths import Refused
from .policy import PullPolicy
from .replies import oci_error
from .routing import PROXY, Proxy
from .settings import ProxySettings
from .tokens import handle_token

log = structlog.get_logger("ocimirror.proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn upstream failures into OCI errors and count every answer."""
    proxy = request.app[PROXY]
    started = time.monotonic()
    resp: web.StreamResponse
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        resp = e
    except Refused as e:
        allow = {"Allow": "GET, HEAD"} if e.status == 405 else None
        resp = oci_error(e.status, e.code, e.message, headers=allow)
    except NotFound as e:
        log.info("upstream has no such blob", path=request.path, error=str(e))
        resp = oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
    except RateLimited as e:
        proxy.metrics.upstream_errors.labels(request.get("upstream", "-"), "http_429").inc()
        wait = {"Retry-After": str(int(e.retry_after))} if e.retry_after is not None else {}
        resp = oci_error(429, "TOOMANYREQUESTS", "too many requests", headers=wait)
    except AuthError as e:
        proxy.metrics.upstream_errors.labels(request.get("upstream", "-"), "credentials").inc()
        log.warning("upstream refused the proxy's credentials", path=request.path, error=str(e))
        resp = oci_error(403, "DENIED", "requested access to the resource is denied")
    except (aiohttp.ClientError, TimeoutError, OcimirrorError) as e:
        resp = _upstream_failed(proxy, request, e)
    proxy.metrics.requests.labels(
        request.get("upstream", "-"), request.get("kind", "other"), request.method, resp.status
    ).inc()
    log.debug(
        "request",
        method=request.method,
        path=request.path,
        status=resp.status,
        seconds=round(time.monotonic() - started, 4),
    )
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


def _upstream_failed(proxy: Proxy, request: web.Request, e: Exception) -> web.Response:
    """The answer when the upstream failed: 503 with `Retry-After` when it answered 5xx
    (it is up but failing, the client should come back), 502 when it could not be reached
    or answered nonsense. Neither says what the upstream said; the log does, in one line."""
    error = str(e) or type(e).__name__
    upstream = request.get("upstream", "-")
    if isinstance(e, RegistryError) and not isinstance(e, Unreachable) and 500 <= e.status < 600:
        proxy.metrics.upstream_errors.labels(upstream, f"http_{e.status}").inc()
        log.warning("upstream answered 5xx", path=request.path, status=e.status, error=error)
        return oci_error(
            503,
            "UNAVAILABLE",
            "the upstream registry is failing, try again later",
            headers={"Retry-After": RETRY_AFTER_5XX},
        )
    proxy.metrics.upstream_errors.labels(upstream, "unreachable").inc()
    log.warning("upstream failed", path=request.path, error=error)
    return oci_error(502, "UNAVAILABLE", "the upstream registry could not be reached")


def make_proxy_app(
    settings: ProxySettings,
    *,
    cache: ProxyCache | None = None,
    metrics: ProxyMetrics | None = None,
    policy: PullPolicy | None = None,
) -> web.Application:
    """Build the proxy's aiohttp application (upstream sessions close with it).

    Without a `cache` given, one is opened when the settings name one (a directory or an
    object store), and closed with the application; a cache given is the caller's to close.
    A `policy` given (say, with a test's clock) decides for the cache instead of the
    default one (`PullPolicy` with the cache's tag TTL).
    """
    owned: ProxyCache | None = None
    c = settings.cache
    if cache is None and c.enabled:
        store = open_store(c.store, c.store_options()) if c.store else None
        cache = owned = ProxyCache(
            c.directory,
            store=store,
            store_name=c.store or "",
            max_bytes=c.max_size,
            tag_ttl=c.tag_ttl,
        )
    proxy = Proxy(settings, cache=cache, metrics=metrics, policy=policy)
    app = web.Application(middlewares=[_middleware])
    app[PROXY] = proxy

    async def close(_app: web.Application) -> None:
        await proxy.close()
        if owned is not None:
            await owned.close()

    app.on_cleanup.append(close)
    r = app.router
    r.add_route("*", "/_token", handle_token)
    r.add_route("*", "/_token/{name}", handle_token)
    r.add_route("*", "/metrics", handle_metrics)
    r.add_route("*", "/healthz", handle_health)
    r.add_route("*", "/v2", handle_v2)
    r.add_route("*", "/v2/{rest:.*}", handle_v2)
    r.add_route("*", "/{rest:.*}", handle_other)
    return app
