"""Client requests sent upstream, and upstream answers passed back to the client.

`open_upstream` sends the client's request (its negotiation, range and caching headers,
its own `Authorization` for a pass-through upstream, never the proxy's credentials);
`respond` answers the client with what came back, headers rewritten to its names, the
body streamed (an error's body replaced by the proxy's own, `errorbody`); a body asked
for by digest is hashed on the way, its last chunk held back until it matches, and the
connection cut when it does not, so a client never gets complete wrong bytes. Blob redirects
pass through to the client unless `stream_blobs`; `follow_redirects` follows them on the
proxy's side (what a cache's single-flight fetch, `open_upstream_blob`, needs).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog
from aiohttp import web

from .. import digest as digests
from ..client import READ_SIZE
from .blobfetch import UpstreamBlob
from .errorbody import error_body
from .replies import ANONYMOUS_TOKEN, oci_error
from .rewrite import QueryMap, response_headers
from .routing import PROXY, Route

log = structlog.get_logger("ocimirror.proxy")

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_FORWARDED = (
    "Accept",
    "Accept-Encoding",
    "Range",
    "If-Range",
    "If-None-Match",
    "If-Modified-Since",
    "User-Agent",
)


def client_authorization(request: web.Request) -> str | None:
    """The client's Authorization to pass upstream (never the proxy's own credentials)."""
    proxy = request.app[PROXY]
    header = request.headers.get("Authorization")
    if proxy.auth.enabled or header == f"Bearer {ANONYMOUS_TOKEN}":
        return None
    return header


def forwarded_headers(request: web.Request, *, identity: bool = False) -> dict[str, str]:
    """The request headers that go upstream (content negotiation, ranges, caching).

    Without the client's own Accept-Encoding (or with `identity`, for bodies the proxy
    rewrites) the upstream is asked for the bytes as they are, not aiohttp's gzip.
    """
    out = {"Accept-Encoding": "identity"}
    for name in _FORWARDED:
        values = request.headers.getall(name, [])
        if values:
            out[name] = ", ".join(values)
    if identity:
        out["Accept-Encoding"] = "identity"
    return out


def negotiation_headers(request: web.Request) -> dict[str, str]:
    """The request headers a cache's own upstream requests carry: the client's Accept and
    User-Agent, never its ranges or conditions, and the bytes as they are."""
    out = {"Accept-Encoding": "identity"}
    for name in ("Accept", "User-Agent"):
        values = request.headers.getall(name, [])
        if values:
            out[name] = ", ".join(values)
    return out


#: What a client is told to wait when the upstream answers 5xx (a storm may pass soon).
RETRY_AFTER_5XX = "1"


async def open_upstream(
    request: web.Request,
    route: Route,
    path: str,
    *,
    method: str | None = None,
    scopes: frozenset[str] | None = None,
    identity: bool = False,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """Send the client's request for `path` (upstream names, with query) to the upstream
    (with `headers` instead of the client's forwarded ones when given)."""
    return await route.upstream.request(
        method or request.method,
        path,
        headers=forwarded_headers(request, identity=identity) if headers is None else headers,
        client_auth=client_authorization(request),
        scopes=route.scopes if scopes is None else scopes,
    )


async def respond(
    request: web.Request,
    route: Route,
    resp: aiohttp.ClientResponse,
    *,
    body: bytes | None = None,
    link_query: QueryMap | None = None,
) -> web.StreamResponse:
    """Answer the client with an upstream answer: headers rewritten, the body streamed
    (or `body` instead); the upstream answer is released."""
    proxy = request.app[PROXY]
    label = route.upstream.label
    try:
        if resp.status >= 500:
            proxy.metrics.upstream_errors.labels(label, f"http_{resp.status}").inc()
        if resp.status == 401 and route.upstream.mode == "proxy":
            proxy.metrics.upstream_errors.labels(label, "credentials").inc()
            log.warning(
                "the upstream refused the proxy's credentials",
                upstream=label,
                repository=route.upstream_repo,
            )
            return oci_error(403, "DENIED", "requested access to the resource is denied")
        headers = response_headers(request, route, resp, link_query=link_query)
        if resp.status >= 500:
            log.warning(
                "upstream answered 5xx", path=request.path, status=resp.status, upstream=label
            )
            if resp.status == 503 and "Retry-After" not in headers:
                headers["Retry-After"] = RETRY_AFTER_5XX  # say when to come back
        if resp.status >= 400 and body is None:
            body = await error_body(request, resp)
        if body is not None:
            headers.popall("Content-Length", None)
            headers.popall("Content-Encoding", None)
            if resp.status >= 400:
                headers["Content-Type"] = "application/json"
            return web.Response(status=resp.status, body=body, headers=headers)
        out = web.StreamResponse(status=resp.status, headers=headers)
        await out.prepare(request)
        if request.method != "HEAD":
            expected = digest_asked(request, resp)
            h = digests.hasher(expected) if expected else None
            sent = 0
            held = b""  # with a digest to meet, the last chunk waits for the check
            try:
                async for chunk in resp.content.iter_chunked(READ_SIZE):
                    if h is None:
                        await out.write(chunk)
                        sent += len(chunk)
                        continue
                    h.update(chunk)
                    if held:
                        await out.write(held)
                        sent += len(held)
                    held = chunk
            except (aiohttp.ClientError, TimeoutError) as e:
                proxy.metrics.upstream_errors.labels(label, "broken_body").inc()
                log.warning("upstream body broken", upstream=label, path=request.path, error=str(e))
                return cut(request, out)
            finally:
                proxy.metrics.bytes.labels(label, "upstream").inc(sent)
            if h is not None and f"{digests.algorithm(expected)}:{h.hexdigest()}" != expected:
                proxy.metrics.upstream_errors.labels(label, "digest_mismatch").inc()
                log.warning(
                    "upstream body does not match its digest",
                    upstream=label,
                    path=request.path,
                    digest=expected,
                )
                return cut(request, out)
            if held:
                await out.write(held)
        await out.write_eof()
        return out
    finally:
        resp.release()


def digest_asked(request: web.Request, resp: aiohttp.ClientResponse) -> str:
    """The digest a whole answer's body must hash to: the one a GET of a blob or of a
    manifest by digest names, when the answer is a 200 in no content encoding; else ''."""
    if request.method != "GET" or resp.status != 200:
        return ""
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        return ""
    parts = request.path.rsplit("/", 2)
    if len(parts) < 3 or parts[1] not in ("blobs", "manifests"):
        return ""
    return parts[2] if digests.is_valid(parts[2]) else ""


def cut(request: web.Request, out: web.StreamResponse) -> web.StreamResponse:
    """End a prepared answer by cutting the connection: the client sees a short body,
    never a complete one. Not just `force_close`: aiohttp ends the response after the
    handler, and a chunked body would get its last chunk and look whole."""
    out.force_close()
    if request.transport is not None:
        request.transport.close()  # what is buffered goes out, then the end of the line
    return out


async def follow_redirects(
    request: web.Request,
    route: Route,
    resp: aiohttp.ClientResponse,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """Follow an upstream's redirects (storage, CDN) on the proxy's side.

    The upstream's own host gets the usual credentials, any other host none, and only at
    a public address unless `allow_private_redirects` (`Upstream.redirect_client`: an
    AddressRefused otherwise, a 502 to the client); `headers` replace the client's
    forwarded ones when given.
    """
    method = method or request.method
    sent = forwarded_headers(request) if headers is None else headers
    hops = 0
    while resp.status in REDIRECTS and hops < 5:
        hops += 1
        location = urljoin(str(resp.url), resp.headers.get("Location", ""))
        resp.release()
        if urlsplit(location).netloc.lower() == route.upstream.host.lower():
            resp = await open_upstream(request, route, location, method=method, headers=headers)
            continue
        foreign = {k: v for k, v in sent.items() if k != "Accept"}
        # Redirects lead blobs to storage: a pool of their own, guarded by address.
        resp = await route.upstream.redirect_client.request(
            method, location, headers=foreign, authenticate=False
        )
    return resp


@asynccontextmanager
async def open_upstream_blob(
    request: web.Request, route: Route, path: str
) -> AsyncIterator[UpstreamBlob]:
    """Open a whole upstream blob, redirects followed on the proxy's side, with its size when
    the upstream says (what a cache's single-flight fetch needs; the client's ranges and
    conditions are left out); NotFound, AuthError or RegistryError when the upstream does
    not give it."""
    headers = negotiation_headers(request)
    headers.pop("Accept", None)
    resp = await open_upstream(request, route, path, method="GET", headers=headers)
    resp = await follow_redirects(request, route, resp, method="GET", headers=headers)
    try:
        if resp.status != 200:
            raise await route.upstream.client.error_from(resp, route.upstream.host + path)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in resp.content.iter_chunked(READ_SIZE):
                yield chunk

        encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
        yield UpstreamBlob(chunks(), None if encoded else resp.content_length)
    finally:
        resp.release()


@asynccontextmanager
async def upstream_blob(
    request: web.Request, route: Route, path: str
) -> AsyncIterator[AsyncIterable[bytes]]:
    """Open an upstream blob as a stream of bytes, as `open_upstream_blob` does."""
    async with open_upstream_blob(request, route, path) as blob:
        yield blob.chunks


async def upstream_manifest(request: web.Request, route: Route, path: str) -> web.StreamResponse:
    """Answer a manifest GET or HEAD from the upstream, as it answers."""
    resp = await open_upstream(request, route, path)
    return await respond(request, route, resp)


async def upstream_blob_answer(request: web.Request, route: Route, path: str) -> web.StreamResponse:
    """Answer a blob GET or HEAD from the upstream; redirects pass through to the client
    unless `stream_blobs`, which serves the bytes from here."""
    proxy = request.app[PROXY]
    resp = await open_upstream(request, route, path)
    if proxy.settings.stream_blobs and resp.status in REDIRECTS:
        resp = await follow_redirects(request, route, resp)
    return await respond(request, route, resp)


async def respond_json(
    request: web.Request,
    route: Route,
    resp: aiohttp.ClientResponse,
    rewrite: Callable[[dict[str, Any]], bool],
    *,
    link_query: QueryMap | None = None,
) -> web.StreamResponse:
    """Answer with an upstream's JSON object, `rewrite` putting the client's names in it
    (False: nothing to change); any other answer goes on as it came."""
    if resp.status != 200 or request.method == "HEAD":
        return await respond(request, route, resp)
    raw = await resp.read()
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        doc = None
    if isinstance(doc, dict) and rewrite(doc):
        raw = json.dumps(doc).encode()
    return await respond(request, route, resp, body=raw, link_query=link_query)
