"""The pull-through cache in the proxy's answers (`ocimirror proxy --cache DIR|URL`).

`cache.ProxyCache` is the mechanism; the policy is here:

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
grant is remembered for `--tag-ttl` (a tag) or `DIGEST_GRANT_TTL` (a digest), after which
a HEAD asks again. The client that starts the one fetch of a blob is authorized by that
fetch; clients joining it, or reading a cached blob, by a grant or a HEAD of their own.
When the upstream fails, a stale copy goes only to clients granted that object within
`STALE_GRANT_TTL`. Grants live in memory (the latest `GRANT_LIMIT`): after a restart each
client's first request for an object asks the upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .. import digest as digests
from ..errors import AuthError, NotFound, OcimirrorError, RegistryError
from ..manifest import MAX_MANIFEST_SIZE
from ..reference import TAG_RE
from .app import (
    API_VERSION,
    PROXY,
    Route,
    client_authorization,
    negotiation_headers,
    open_upstream,
    open_upstream_blob,
    respond,
    upstream_blob_answer,
    upstream_manifest,
)
from .cache import CachedManifest, ProxyCache, TagEntry, UpstreamBlob

log = structlog.get_logger("ocimirror.proxy")

#: Seconds a pass-through upstream's yes to a client for a digest is trusted.
DIGEST_GRANT_TTL = 3600.0
#: Seconds after a yes that the client may still get the stale copy when the upstream fails.
STALE_GRANT_TTL = 86400.0
#: Grants remembered at most (the least recent go first).
GRANT_LIMIT = 100_000
#: The `Warning` of an answer the upstream could not revalidate (RFC 7234).
STALE_WARNING = '110 - "Response is Stale"'

GrantKey = tuple[str, str, str, str]


class Grants:
    """What pass-through upstreams let whom read: (upstream, repository, who, tag or digest)."""

    def __init__(
        self, limit: int = GRANT_LIMIT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Remember up to `limit` grants, timed by `clock`."""
        self._seen: OrderedDict[GrantKey, float] = OrderedDict()
        self._limit = limit
        self._clock = clock

    def allow(self, route: Route, who: str, obj: str) -> None:
        """Record that the upstream let `who` read `obj` in the route's repository just now."""
        key = (route.upstream.label, route.upstream_repo, who, obj)
        self._seen[key] = self._clock()
        self._seen.move_to_end(key)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def granted(self, route: Route, who: str, obj: str, max_age: float) -> bool:
        """Tell whether `who`, or anyone (an anonymous grant), may read `obj` as of `max_age` ago."""
        now = self._clock()
        for whom in {who, ""}:
            at = self._seen.get((route.upstream.label, route.upstream_repo, whom, obj))
            if at is not None and now - at < max_age:
                return True
        return False


class Flights:
    """Fetches in flight by key, so that askers of the same thing wait for the first one."""

    def __init__(self) -> None:
        """Start with none in flight."""
        self._flying: dict[tuple[str, ...], asyncio.Event] = {}

    def joined(self, key: tuple[str, ...]) -> asyncio.Event | None:
        """Return the event a fetch of `key` in flight sets when done; None when none is."""
        return self._flying.get(key)

    @asynccontextmanager
    async def lead(self, key: tuple[str, ...]) -> AsyncIterator[None]:
        """Be the fetch of `key` in flight until the block ends (however it ends)."""
        done = asyncio.Event()
        self._flying[key] = done
        try:
            yield
        finally:
            if self._flying.get(key) is done:
                del self._flying[key]
            done.set()


@dataclass(frozen=True)
class Check:
    """The outcome of authorizing a cache hit: go ahead (maybe stale), or this answer instead."""

    refusal: web.StreamResponse | None = None
    stale: bool = False


# -- small helpers -------------------------------------------------------------------------


def _cache(request: web.Request) -> ProxyCache:
    cache = request.app[PROXY].cache
    assert cache is not None
    return cache


def client_identity(request: web.Request) -> str:
    """Who the client is to a pass-through upstream: its Authorization, hashed ("": none)."""
    auth = client_authorization(request)
    return hashlib.sha256(auth.encode()).hexdigest() if auth else ""


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


def failure_reason(error: BaseException) -> str | None:
    """Name an upstream failure a stale copy may stand in for; None for other errors."""
    if isinstance(error, AuthError | NotFound):
        return None
    if isinstance(error, RegistryError):
        if error.status == 429 or error.status >= 500 or error.status == 0:
            return f"http_{error.status}" if error.status else "unavailable"
        return None
    if isinstance(error, aiohttp.ClientError | TimeoutError):
        return "unreachable"
    return None


def status_failure(status: int) -> str | None:
    """Name an upstream status a stale copy may stand in for (429, 5xx); None otherwise."""
    return f"http_{status}" if status == 429 or status >= 500 else None


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


def stale_allowed(request: web.Request, route: Route, obj: str) -> bool:
    """Tell whether the client may have the stale copy of `obj` while the upstream fails."""
    if route.upstream.mode != "passthrough":
        return True
    grants = request.app[PROXY].grants
    return grants.granted(route, client_identity(request), obj, STALE_GRANT_TTL)


def grant(request: web.Request, route: Route, *objs: str | None) -> None:
    """Record that a pass-through upstream let this client read `objs`."""
    if route.upstream.mode != "passthrough":
        return
    who = client_identity(request)
    for obj in objs:
        if obj:
            request.app[PROXY].grants.allow(route, who, obj)


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


async def authorize(
    request: web.Request, route: Route, kind: str, obj: str, path: str, max_age: float
) -> Check:
    """Make sure the client may read `obj` (a `kind`) before the cache answers (pass-through
    only): a grant younger than `max_age`, else a HEAD upstream with its credentials."""
    if route.upstream.mode != "passthrough":
        return Check()
    proxy = request.app[PROXY]
    who = client_identity(request)
    if proxy.grants.granted(route, who, obj, max_age):
        return Check()
    try:
        head = await head_upstream(request, route, path)
    except Exception as e:
        reason = failure_reason(e)
        if reason is None or not proxy.grants.granted(route, who, obj, STALE_GRANT_TTL):
            raise
        note_failure(request, route, reason, kind, str(e) or type(e).__name__)
        return Check(stale=True)
    if head.status < 400:
        head.release()
        proxy.grants.allow(route, who, obj)
        return Check()
    reason = status_failure(head.status)
    if reason is not None and proxy.grants.granted(route, who, obj, STALE_GRANT_TTL):
        head.release()
        note_failure(request, route, reason, kind, f"HTTP {head.status}")
        return Check(stale=True)
    return Check(refusal=await relay(request, route, path, head))


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
        return await _cache(request).put_manifest(
            route.upstream.label, route.upstream_repo, reference, raw, media_type
        )
    except (OcimirrorError, ValueError) as e:
        log.warning("manifest not cached", path=request.path, error=str(e))
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
    if resp.status != 200:
        if resp.status == 404 and tag is not None and route.upstream.mode == "proxy":
            _cache(request).forget_tag(route.upstream.label, route.upstream_repo, tag)
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
    cached = await _cache(request).get_manifest(digest)
    if cached is not None and accepts(accept_header(request), cached.media_type):
        check = await authorize(request, route, "manifest", digest, path, DIGEST_GRANT_TTL)
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
    cache = _cache(request)
    proxy = request.app[PROXY]
    entry = await cache.tag(route.upstream.label, route.upstream_repo, tag)
    if entry is None and request.method == "GET":
        who = client_identity(request) if route.upstream.mode == "passthrough" else ""
        key = (route.upstream.label, route.upstream_repo, tag, accept_header(request), who)
        flight = proxy.flights.joined(key)
        if flight is None:
            async with proxy.flights.lead(key):
                return await fetch_manifest(request, route, path, tag=tag, store=tag)
        await flight.wait()
        proxy.metrics.cache_coalesced.labels("manifest").inc()
        entry = await cache.tag(route.upstream.label, route.upstream_repo, tag)
    if entry is None:
        return await fetch_manifest(request, route, path, tag=tag, store=tag)
    if not accepts(accept_header(request), entry.media_type):
        # Another type than the cached one: the tag keeps pointing where it did.
        return await fetch_manifest(request, route, path, tag=tag, store=None)
    passthrough = route.upstream.mode == "passthrough"
    who = client_identity(request)
    if entry.fresh and (not passthrough or proxy.grants.granted(route, who, tag, cache.tag_ttl)):
        cached = await cache.get_manifest(entry.digest)
        if cached is not None:
            return manifest_answer(request, route, cached)
        return await fetch_manifest(request, route, path, tag=tag, store=tag)
    return await _revalidate(request, route, tag, path, entry)


async def _revalidate(
    request: web.Request, route: Route, tag: str, path: str, entry: TagEntry
) -> web.StreamResponse:
    """Ask the upstream with a HEAD where a cached tag points now, and answer accordingly."""
    cache = _cache(request)
    try:
        head = await head_upstream(request, route, path)
    except Exception as e:
        reason = failure_reason(e)
        if reason is None or not stale_allowed(request, route, tag):
            raise
        stale = await cache.get_manifest(entry.digest)
        if stale is None:
            raise
        note_failure(request, route, reason, "manifest", str(e) or type(e).__name__)
        return manifest_answer(request, route, stale, stale=True)
    reason = status_failure(head.status)
    if reason is not None and stale_allowed(request, route, tag):
        stale = await cache.get_manifest(entry.digest)
        if stale is not None:
            head.release()
            note_failure(request, route, reason, "manifest", f"HTTP {head.status}")
            return manifest_answer(request, route, stale, stale=True)
    if head.status != 200:
        if head.status == 404 and route.upstream.mode == "proxy":
            cache.forget_tag(route.upstream.label, route.upstream_repo, tag)
        return await relay(request, route, path, head)
    grant(request, route, tag)
    said = head.headers.get("Docker-Content-Digest")
    if said == entry.digest and await cache.touch_tag(
        route.upstream.label, route.upstream_repo, tag, said
    ):
        cached = await cache.get_manifest(said)
        if cached is not None:
            head.release()
            grant(request, route, said)
            return manifest_answer(request, route, cached)
    if request.method == "HEAD":
        # The tag moved: the upstream's own answer, and a HEAD stays a HEAD.
        request.app[PROXY].metrics.cache_misses.labels("manifest").inc()
        return await respond(request, route, head)
    head.release()
    return await fetch_manifest(request, route, path, tag=tag, store=tag)


# -- blobs ---------------------------------------------------------------------------------------


def blob_headers(digest: str, *, stale: bool = False) -> dict[str, str]:
    """The headers of a blob answered by the proxy."""
    headers = {
        **API_VERSION,
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": digest,
        "Etag": f'"{digest}"',
        "Accept-Ranges": "bytes",
    }
    if stale:
        headers["Warning"] = STALE_WARNING
    return headers


class Unsatisfiable(ValueError):
    """A byte range that lies beyond the end of the blob."""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """Return (first, last) of a single `bytes=` range of a blob of `size` bytes; None when
    it is not one (the whole blob is sent); Unsatisfiable when it lies beyond the end."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    start, sep, end = spec.strip().partition("-")
    if not sep or not (start.isdigit() or end.isdigit()):
        return None
    if not start:
        suffix = int(end)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return max(0, size - suffix), size - 1
    if not start.isdigit() or (end and not end.isdigit()):
        return None
    first = int(start)
    last = int(end) if end else size - 1
    if end and last < first:
        return None
    if first >= size:
        raise Unsatisfiable(header)
    return first, min(last, size - 1)


async def _ranged_answer(
    request: web.Request, route: Route, digest: str, span: tuple[int, int], size: int
) -> web.StreamResponse | None:
    """Answer a range of a cached blob (206); None when it went meanwhile or cannot be read."""
    proxy = request.app[PROXY]
    first, last = span
    try:
        async with _cache(request).open_range(digest, first, last) as chunks:
            proxy.metrics.cache_hits.labels("blob").inc()
            out = web.StreamResponse(status=206, headers=blob_headers(digest))
            out.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            out.content_length = last - first + 1
            await out.prepare(request)

            def failed(e: Exception) -> None:
                log.warning("cached blob read failed midway", digest=digest, error=str(e))

            counter = proxy.metrics.bytes.labels(route.upstream.label, "cache")
            return await pour(out, chunks, counter.inc, failed)
    except (NotFound, OcimirrorError) as e:
        log.info("cached blob range not served from the cache", digest=digest, error=str(e))
        return None


async def cached_blob(
    request: web.Request, route: Route, digest: str, path: str
) -> web.StreamResponse:
    """Answer a blob GET or HEAD through the cache: cached, fetched once, or upstream's."""
    cache = _cache(request)
    if not digests.is_valid(digest):
        return await upstream_blob_answer(request, route, path)
    cached = await cache.discover(digest)
    if cached and request.method == "GET" and request.app[PROXY].settings.cache.redirect:
        answer = await _redirect_to_store(request, route, digest, path)
        if answer is not None:
            return answer
    if request.method == "GET" and "Range" not in request.headers:
        return await _whole_blob(request, route, digest, path)
    metrics = request.app[PROXY].metrics
    check = await authorize(request, route, "blob", digest, path, DIGEST_GRANT_TTL)
    if check.refusal is not None:
        return check.refusal
    size = cache.blob_size(digest)
    if size is None:
        metrics.cache_misses.labels("blob").inc()
        return await upstream_blob_answer(request, route, path)
    if request.method == "HEAD":
        metrics.cache_hits.labels("blob").inc()
        out = web.StreamResponse(status=200, headers=blob_headers(digest, stale=check.stale))
        out.content_length = size
        await out.prepare(request)
        await out.write_eof()
        return out
    try:
        span = byte_range(request.headers["Range"], size)
    except Unsatisfiable:
        headers = {**blob_headers(digest), "Content-Range": f"bytes */{size}"}
        return web.Response(status=416, headers=headers)
    if span is not None and request.headers.get("If-Range") in (None, f'"{digest}"'):
        answer = await _ranged_answer(request, route, digest, span, size)
        if answer is not None:
            return answer
    return await _whole_blob(request, route, digest, path, check=check)


async def pour(
    out: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    count: Callable[[int], None],
    failed: Callable[[Exception], None],
) -> web.StreamResponse:
    """Write `chunks` into a prepared response and end it; `count` gets the bytes sent. A
    client that went away ends it quietly; a source failing midway (`failed` is told) cuts
    the connection, so the client sees a short body, never a complete wrong one."""
    sent = 0
    try:
        async for data in chunks:
            await out.write(data)
            sent += len(data)
    except ConnectionResetError:
        return out
    except (OcimirrorError, aiohttp.ClientError, TimeoutError, OSError) as e:
        failed(e)
        out.force_close()
        return out
    finally:
        count(sent)
    await out.write_eof()
    return out


class SentFile(web.FileResponse):
    """A FileResponse sent inside the handler (so the blob stays pinned while it goes out),
    which aiohttp's own `prepare()` after the handler then leaves alone.

    aiohttp 3.14 prepares the returned response again; a FileResponse re-opens its file
    and fails an assertion once the first one has sent everything, and the connection is
    dropped: a keep-alive client's next request on it got `Server disconnected`.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Send the file the first time; later calls are no-ops."""
        if self.prepared:
            return None
        return await super().prepare(request)


async def _redirect_to_store(
    request: web.Request, route: Route, digest: str, path: str
) -> web.StreamResponse | None:
    """Send the client to a presigned URL of a cached blob (`--cache-redirect`), once it
    may read it; None when the store cannot sign (the bytes then go through the proxy)."""
    check = await authorize(request, route, "blob", digest, path, DIGEST_GRANT_TTL)
    if check.refusal is not None:
        return check.refusal
    url = await _cache(request).blob_url(digest)
    if url is None:
        return None
    request.app[PROXY].metrics.cache_hits.labels("blob").inc()
    headers = {**blob_headers(digest, stale=check.stale), "Location": url}
    del headers["Content-Type"]
    return web.Response(status=307, headers=headers)


async def _whole_blob(
    request: web.Request, route: Route, digest: str, path: str, *, check: Check | None = None
) -> web.StreamResponse:
    """Stream a whole blob: from the cache, or from the one upstream fetch of it.

    The client that starts the fetch is authorized by it (its own credentials go upstream);
    anyone else (`check` not given) once the blob is open: by the grant the fetch left for
    the same credentials, by an earlier grant, or by a HEAD of its own.
    """
    cache = _cache(request)
    metrics = request.app[PROXY].metrics
    label = route.upstream.label
    joins = not cache.has_blob(digest) and cache.fetching(digest)
    starts = not cache.has_blob(digest) and not joins

    @asynccontextmanager
    async def opener() -> AsyncIterator[UpstreamBlob]:
        async with open_upstream_blob(request, route, path) as blob:
            grant(request, route, digest)
            yield blob

    try:
        async with cache.fetch_blob(digest, None, opener) as stream:
            if check is None and not starts:
                check = await authorize(request, route, "blob", digest, path, DIGEST_GRANT_TTL)
                if check.refusal is not None:
                    return check.refusal
            if stream.cached:
                metrics.cache_hits.labels("blob").inc()
            else:
                metrics.cache_misses.labels("blob").inc()
                if joins:
                    metrics.cache_coalesced.labels("blob").inc()
            source = "cache" if stream.cached else "upstream"
            stale = check is not None and check.stale
            file = cache.blob_path(digest) if stream.cached else None
            if file is not None:
                # A whole cached blob goes out with sendfile (the kernel copies it): about
                # twice the bytes per CPU second of reading chunks in a thread. The open
                # stream keeps the file from being evicted while it is sent.
                sendfile = SentFile(file, headers=blob_headers(digest, stale=stale))
                await sendfile.prepare(request)
                metrics.bytes.labels(label, source).inc(stream.size or 0)
                return sendfile
            out = web.StreamResponse(status=200, headers=blob_headers(digest, stale=stale))
            if stream.size is not None:
                out.content_length = stream.size
            await out.prepare(request)

            def failed(e: Exception) -> None:
                if stream.cached:
                    log.warning("cached blob read failed midway", digest=digest, error=str(e))
                    return
                metrics.upstream_errors.labels(label, "broken_body").inc()
                log.warning("blob fetch failed midway", upstream=label, digest=digest, error=str(e))

            return await pour(out, stream, metrics.bytes.labels(label, source).inc, failed)
    except AuthError:
        if not starts or route.upstream.mode != "passthrough":
            raise
        # The upstream refused this client's own credentials: its answer, challenge and all.
        return await upstream_blob_answer(request, route, path)
