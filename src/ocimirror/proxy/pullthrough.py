"""The pull-through cache in the proxy's answers (`ocimirror proxy --cache DIR|URL`).

`cache.ProxyCache` is the mechanism and `policy.PullPolicy` decides; this module asks the
cache and the upstream for the facts, has the policy decide, and carries its decisions
out. Manifests are served here, blobs in `cachedblobs`.

- Manifests by digest and blobs are served from the cache once there, for as long as they
  are kept (least recently used go first beyond `--cache-max-size`).
- A tag is served from the cache for `--tag-ttl` after it was fetched or revalidated; then
  a HEAD upstream (never a GET, which Docker Hub counts), with the client's `Accept`, says
  whether it still points at the cached digest (served from the cache) or elsewhere (the
  new manifest is fetched, stored and served). A client's HEAD never becomes a GET.
- Stale-if-error: when the upstream cannot be reached, answers 5xx or 429, the cached copy
  is served with `Warning: 110 - "Response is Stale"` (and a log line).
- Manifests keep the exact bytes and media type received. A cached manifest whose media
  type the client's `Accept` does not take goes upstream instead; what comes back is
  stored by digest only (the tag keeps the manifest it had).
- A tag not cached is fetched once for the GETs of it in flight together (same Accept and,
  pass-through, the same credentials; `Flights`); the others are answered from the cache.
- A blob not cached is fetched once however many clients want it at the same time, and
  streamed to each as it arrives (`ProxyCache.fetch_blob`); a HEAD or a ranged GET of a
  blob not cached goes upstream as without the cache. Cached blobs answer ranges.

Authorization. When the proxy logs in upstream itself (`proxy` mode: it has credentials,
or clients log in to the proxy), whoever may use the proxy may read what it reads, so the
cache answers on its own. A pass-through upstream decides per client: the cache answers
only once the upstream let that client's own `Authorization` (the same header value; no
header for anonymous clients, and what an anonymous client may read anyone may) read that
very tag or digest in that repository, by answering a GET or a HEAD sent with it. Such a
grant is remembered for `--tag-ttl` (a tag) or `policy.DIGEST_GRANT_TTL` (a digest), after
which a HEAD asks again. The client that starts the one fetch of a blob is authorized by
that fetch; clients joining it, or reading a cached blob, by a grant or a HEAD of their
own. When the upstream fails, a stale copy goes only to clients granted that object within
`policy.STALE_GRANT_TTL`. Grants live in memory (the latest `policy.GRANT_LIMIT`): after a
restart each client's first request for an object asks the upstream.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from .. import digest as digests
from ..errors import OcimirrorError
from ..manifest import MAX_MANIFEST_SIZE
from ..reference import TAG_RE
from .cache import CachedManifest, ProxyCache, TagEntry
from .forward import (
    client_authorization,
    negotiation_headers,
    open_upstream,
    respond,
    upstream_manifest,
)
from .policy import Fetch, Reader, Refuse, Serve, failure_reason
from .replies import API_VERSION
from .routing import PROXY, Route

log = structlog.get_logger("ocimirror.proxy")

#: The `Warning` of an answer the upstream could not revalidate (RFC 7234).
STALE_WARNING = '110 - "Response is Stale"'


@dataclass(frozen=True)
class Check:
    """The outcome of authorizing a cache hit: go ahead (maybe stale), or this answer instead."""

    refusal: web.StreamResponse | None = None
    stale: bool = False


# -- facts ---------------------------------------------------------------------------------


def the_cache(request: web.Request) -> ProxyCache:
    """Return the proxy's cache (only called when there is one)."""
    cache = request.app[PROXY].cache
    assert cache is not None
    return cache


def client_identity(request: web.Request) -> str:
    """Who the client is to a pass-through upstream: its Authorization, hashed ("": none)."""
    auth = client_authorization(request)
    return hashlib.sha256(auth.encode()).hexdigest() if auth else ""


def reader(request: web.Request, route: Route) -> Reader:
    """Who asks for what where, as the policy sees it."""
    passthrough = route.upstream.mode == "passthrough"
    return Reader(
        route.upstream.label,
        route.upstream_repo,
        client_identity(request) if passthrough else "",
        passthrough,
    )


def accept_header(request: web.Request) -> str:
    """The client's Accept headers as one list ("" when it sent none)."""
    return ", ".join(request.headers.getall("Accept", []))


def accepts(accept: str, media_type: str) -> bool:
    """Tell whether an Accept header takes a media type (no header, or `*/*`, takes all)."""
    if not accept.strip():
        return True
    wanted = media_type.split(";")[0].strip().lower()
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        kind = kind.lower()
        if not kind:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 1.0
        if q <= 0:
            continue
        if kind in ("*/*", wanted) or (kind.endswith("/*") and wanted.startswith(kind[:-1])):
            return True
    return False


# -- carrying decisions out -----------------------------------------------------------------


def note_failure(request: web.Request, route: Route, reason: str, kind: str, error: str) -> None:
    """Count an upstream failure the cache stands in for, and say so in the log."""
    metrics = request.app[PROXY].metrics
    metrics.upstream_errors.labels(route.upstream.label, reason).inc()
    metrics.cache_stale.labels(kind).inc()
    log.warning(
        "upstream failed, serving the stale cached copy",
        upstream=route.upstream.label,
        path=request.path,
        error=error,
    )


def grant(request: web.Request, route: Route, *objs: str | None) -> None:
    """Record that a pass-through upstream let this client read `objs`."""
    request.app[PROXY].policy.grant(reader(request, route), *objs)


async def head_upstream(request: web.Request, route: Route, path: str) -> aiohttp.ClientResponse:
    """Send a HEAD for `path` upstream with the client's Accept and credentials."""
    return await open_upstream(
        request, route, path, method="HEAD", headers=negotiation_headers(request)
    )


async def relay(
    request: web.Request, route: Route, path: str, head: aiohttp.ClientResponse
) -> web.StreamResponse:
    """Pass an upstream's no on: its answer to a HEAD, else the client's own request's."""
    if request.method == "HEAD":
        return await respond(request, route, head)
    head.release()
    resp = await open_upstream(request, route, path)
    return await respond(request, route, resp)


async def authorize(request: web.Request, route: Route, kind: str, digest: str, path: str) -> Check:
    """Make sure the client may read a cached `digest` (a `kind`) before the cache answers:
    as the policy decides, from a grant, or from a HEAD upstream with its credentials."""
    policy = request.app[PROXY].policy
    who = reader(request, route)
    if isinstance(policy.decide_digest(who, digest), Serve):
        return Check()
    try:
        head = await head_upstream(request, route, path)
    except Exception as e:
        reason = failure_reason(e)
        if reason is None or isinstance(policy.decide_error(who, digest, reason), Refuse):
            raise
        note_failure(request, route, reason, kind, str(e) or type(e).__name__)
        return Check(stale=True)
    decision = policy.decide_access(who, digest, head.status)
    if isinstance(decision, Refuse):
        return Check(refusal=await relay(request, route, path, head))
    head.release()
    if decision.stale:
        note_failure(request, route, f"http_{head.status}", kind, f"HTTP {head.status}")
    return Check(stale=decision.stale)


# -- manifests ---------------------------------------------------------------------------------


def manifest_answer(
    request: web.Request, route: Route, manifest: CachedManifest, *, stale: bool = False
) -> web.Response:
    """Answer with a cached manifest: its exact bytes and media type."""
    metrics = request.app[PROXY].metrics
    metrics.cache_hits.labels("manifest").inc()
    headers = {
        **API_VERSION,
        "Content-Type": manifest.media_type,
        "Docker-Content-Digest": manifest.digest,
        "Etag": f'"{manifest.digest}"',
    }
    if stale:
        headers["Warning"] = STALE_WARNING
    if request.method != "HEAD":
        metrics.bytes.labels(route.upstream.label, "cache").inc(manifest.size)
    return web.Response(body=manifest.raw, headers=headers)


async def store_manifest(
    request: web.Request, route: Route, reference: str, raw: bytes, resp: aiohttp.ClientResponse
) -> str | None:
    """Store a manifest the upstream sent (under a tag, or by its digest); its digest, or
    None when it is not fit to keep."""
    media_type = resp.headers.get("Content-Type", "")
    said = resp.headers.get("Docker-Content-Digest", "")
    try:
        if said and digests.is_valid(said):
            digests.verify(raw, said, "manifest")
        if not media_type:
            raise OcimirrorError("the upstream gave the manifest no Content-Type")
        return await the_cache(request).put_manifest(
            route.upstream.label, route.upstream_repo, reference, raw, media_type
        )
    except (OcimirrorError, ValueError) as e:
        log.warning("manifest not cached", path=request.path, error=str(e))
        return None
    except (OSError, sqlite3.Error) as e:
        if not the_cache(request).disk.noted(e):  # a full disk is logged once, there
            raise
        return None


async def fetch_manifest(
    request: web.Request, route: Route, path: str, *, tag: str | None, store: str | None
) -> web.StreamResponse:
    """Answer a manifest from the upstream (`tag`: the one asked for, if any), storing what
    a GET brings under `store` (a tag or the digest asked for; None: by its own digest
    only); a HEAD goes upstream as it is and stores nothing."""
    proxy = request.app[PROXY]
    proxy.metrics.cache_misses.labels("manifest").inc()
    if request.method == "HEAD":
        return await upstream_manifest(request, route, path)
    resp = await open_upstream(request, route, path, headers=negotiation_headers(request))
    refused = proxy.policy.decide_fetched(reader(request, route), resp.status, tag=tag)
    if refused is not None:
        if refused.forget and tag is not None:
            the_cache(request).forget_tag(route.upstream.label, route.upstream_repo, tag)
        return await respond(request, route, resp)
    if resp.content_length is not None and resp.content_length > MAX_MANIFEST_SIZE:
        return await respond(request, route, resp)
    raw = await resp.read()
    stored = await store_manifest(request, route, store or digests.of(raw), raw, resp)
    grant(request, route, tag, stored)
    proxy.metrics.bytes.labels(route.upstream.label, "upstream").inc(len(raw))
    return await respond(request, route, resp, body=raw)


async def cached_manifest(
    request: web.Request, route: Route, reference: str, path: str
) -> web.StreamResponse:
    """Answer a manifest GET or HEAD through the cache (`reference`: a tag or a digest)."""
    if digests.is_valid(reference):
        return await _manifest_by_digest(request, route, reference, path)
    if TAG_RE.fullmatch(reference):
        return await _manifest_by_tag(request, route, reference, path)
    return await upstream_manifest(request, route, path)


async def _manifest_by_digest(
    request: web.Request, route: Route, digest: str, path: str
) -> web.StreamResponse:
    """A manifest by digest: from the cache when the client takes its type, else fetched."""
    cached = await the_cache(request).get_manifest(digest)
    if cached is not None and accepts(accept_header(request), cached.media_type):
        check = await authorize(request, route, "manifest", digest, path)
        if check.refusal is not None:
            return check.refusal
        return manifest_answer(request, route, cached, stale=check.stale)
    return await fetch_manifest(request, route, path, tag=None, store=digest)


async def _manifest_by_tag(
    request: web.Request, route: Route, tag: str, path: str
) -> web.StreamResponse:
    """A manifest by tag: cached and fresh, revalidated with a HEAD, or fetched.

    A GET of a tag not cached waits for a fetch of it in flight for the same Accept (and,
    pass-through, the same client credentials), then is answered from what that stored.
    """
    cache = the_cache(request)
    proxy = request.app[PROXY]
    who = reader(request, route)
    entry = await cache.tag(route.upstream.label, route.upstream_repo, tag)
    if entry is None and request.method == "GET":
        key = (route.upstream.label, route.upstream_repo, tag, accept_header(request), who.who)
        flight = proxy.flights.joined(key)
        if flight is None:
            async with proxy.flights.lead(key):
                return await fetch_manifest(request, route, path, tag=tag, store=tag)
        await flight.wait()
        proxy.metrics.cache_coalesced.labels("manifest").inc()
        entry = await cache.tag(route.upstream.label, route.upstream_repo, tag)
    decision = proxy.policy.decide_tag(
        who,
        tag,
        age=None if entry is None else entry.age,
        accepted=entry is not None and accepts(accept_header(request), entry.media_type),
    )
    if isinstance(decision, Fetch):
        # Not kept under the tag: another type than the cached one, which the tag keeps.
        store = tag if decision.keep_tag else None
        return await fetch_manifest(request, route, path, tag=tag, store=store)
    assert entry is not None
    if isinstance(decision, Serve):
        cached = await cache.get_manifest(entry.digest)
        if cached is not None:
            return manifest_answer(request, route, cached)
        return await fetch_manifest(request, route, path, tag=tag, store=tag)
    return await _revalidate(request, route, tag, path, entry)


async def _revalidate(
    request: web.Request, route: Route, tag: str, path: str, entry: TagEntry
) -> web.StreamResponse:
    """Ask the upstream with a HEAD where a cached tag points now, and answer accordingly."""
    cache = the_cache(request)
    policy = request.app[PROXY].policy
    who = reader(request, route)
    try:
        head = await head_upstream(request, route, path)
    except Exception as e:
        reason = failure_reason(e)
        if reason is None or isinstance(policy.decide_error(who, tag, reason), Refuse):
            raise
        stale = await cache.get_manifest(entry.digest)
        if stale is None:
            raise
        note_failure(request, route, reason, "manifest", str(e) or type(e).__name__)
        return manifest_answer(request, route, stale, stale=True)
    said = head.headers.get("Docker-Content-Digest")
    decision: Serve | Fetch | Refuse = policy.decide_revalidated(
        who, tag, status=head.status, said=said, cached=entry.digest
    )
    if isinstance(decision, Serve) and decision.stale:
        stale = await cache.get_manifest(entry.digest)
        if stale is not None:
            head.release()
            note_failure(request, route, f"http_{head.status}", "manifest", f"HTTP {head.status}")
            return manifest_answer(request, route, stale, stale=True)
        # No stale copy after all: the upstream's own answer goes on.
        decision = Refuse()
    if isinstance(decision, Refuse):
        if decision.forget:
            cache.forget_tag(route.upstream.label, route.upstream_repo, tag)
        return await relay(request, route, path, head)
    if isinstance(decision, Serve) and await cache.touch_tag(
        route.upstream.label, route.upstream_repo, tag, entry.digest
    ):
        cached = await cache.get_manifest(entry.digest)
        if cached is not None:
            head.release()
            return manifest_answer(request, route, cached)
    if request.method == "HEAD":
        # The tag moved: the upstream's own answer, and a HEAD stays a HEAD.
        request.app[PROXY].metrics.cache_misses.labels("manifest").inc()
        return await respond(request, route, head)
    head.release()
    return await fetch_manifest(request, route, path, tag=tag, store=tag)
