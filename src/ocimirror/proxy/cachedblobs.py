"""Blobs through the pull-through cache: served from it (whole, by range, or by a presigned
URL of its object store), or fetched once upstream for every client that wants them.

A blob not cached is fetched once however many clients want it at the same time, and
streamed to each as it arrives (`ProxyCache.fetch_blob`); the client that starts the
fetch is authorized by it, the others (and readers of a cached blob) as `pullthrough`'s
`authorize` says. A HEAD or a ranged GET of a blob not cached goes upstream as without
the cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .. import digest as digests
from ..errors import AuthError, NotFound, OcimirrorError
from .blobfetch import UpstreamBlob
from .forward import open_upstream_blob, upstream_blob_answer
from .pullthrough import STALE_WARNING, Check, authorize, grant, the_cache
from .replies import API_VERSION
from .routing import PROXY, Route

log = structlog.get_logger("ocimirror.proxy")


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
        async with the_cache(request).open_range(digest, first, last) as chunks:
            proxy.metrics.cache_hits.labels("blob").inc()
            out = web.StreamResponse(status=206, headers=blob_headers(digest))
            out.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            out.content_length = last - first + 1
            await out.prepare(request)

            def failed(e: Exception) -> None:
                log.warning("cached blob read failed midway", digest=digest, error=str(e))

            counter = proxy.metrics.bytes.labels(route.upstream.label, "cache")
            return await pour(request, out, chunks, counter.inc, failed)
    except (NotFound, OcimirrorError) as e:
        log.info("cached blob range not served from the cache", digest=digest, error=str(e))
        return None


async def cached_blob(
    request: web.Request, route: Route, digest: str, path: str
) -> web.StreamResponse:
    """Answer a blob GET or HEAD through the cache: cached, fetched once, or upstream's."""
    cache = the_cache(request)
    if not digests.is_valid(digest):
        return await upstream_blob_answer(request, route, path)
    cached = await cache.discover(digest)
    if not cached and cache.disk.full and not cache.fetching(digest):
        # The cache's disk is full (cachefull.py): the upstream's blob, hashed on the way.
        return await upstream_blob_answer(request, route, path)
    if cached and request.method == "GET" and request.app[PROXY].settings.cache.redirect:
        answer = await _redirect_to_store(request, route, digest, path)
        if answer is not None:
            return answer
    if request.method == "GET" and "Range" not in request.headers:
        return await _whole_blob(request, route, digest, path)
    metrics = request.app[PROXY].metrics
    check = await authorize(request, route, "blob", digest, path)
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
    request: web.Request,
    out: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    count: Callable[[int], None],
    failed: Callable[[Exception], None],
) -> web.StreamResponse:
    """Write `chunks` into a prepared response and end it; `count` gets the bytes sent. A
    client that went away ends it quietly; a source failing midway (`failed` is told) cuts
    the connection, so the client sees a short body, never a complete wrong one.

    Cut, not just marked for closing (`force_close`): aiohttp ends the response after the
    handler, and a chunked body (no Content-Length) would get its last chunk and look whole.
    """
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
        if request.transport is not None:
            request.transport.close()  # what is buffered goes out, then the end of the line
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
    check = await authorize(request, route, "blob", digest, path)
    if check.refusal is not None:
        return check.refusal
    url = await the_cache(request).blob_url(digest)
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
    cache = the_cache(request)
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
                check = await authorize(request, route, "blob", digest, path)
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

            return await pour(request, out, stream, metrics.bytes.labels(label, source).inc, failed)
    except AuthError:
        if not starts or route.upstream.mode != "passthrough":
            raise
        # The upstream refused this client's own credentials: its answer, challenge and all.
        return await upstream_blob_answer(request, route, path)
