"""`/v2/NAME/referrers/DIGEST` from an HTTP upstream: its referrers API, else its
fallback tag, through the pull-through cache when there is one.

- The upstream's referrers API is asked first (with the client's `artifactType`, without
  a cache). Its pages are followed here, on the upstream's own origin and path only (a
  `Link` elsewhere is refused: 502), at most `MAX_PAGES`, and merged into one answer: the
  client gets the whole list, never a `Link`, so no upstream URL reaches it.
- An upstream answering 404, 405 or 501 has no API: the answer is made from its fallback
  tag `sha256-<hex>` (an image index; absent: an empty index), guarded against a
  registry resolving that tag to the subject itself. A 405, a 501 or a 404 that is no
  OCI error (distribution 2.x: `404 page not found`) is remembered for the upstream for
  `referrerindex.NO_API_TTL`, so each subject then costs one request; a 404 with an OCI
  error (a registry with the API and no such repository) is not.
- With the cache, an answer is a tag, never an immutable digest: kept under
  `referrerindex.cache_key(subject)` for the tag TTL, then asked again (a GET: a
  referrers answer has no digest to revalidate with a HEAD), the same grants for
  pass-through upstreams as for tags, and the stale copy when the upstream fails. The
  whole list is fetched and kept (no `artifactType` upstream), and every filter is
  applied to it here.
- Any other upstream answer (401 with its challenge, 403, 5xx) goes to the client as
  manifests' do, in the proxy's words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

import aiohttp
import structlog
from aiohttp import web

from .. import mediatypes as mt
from ..errors import OcimirrorError
from ..manifest import MAX_MANIFEST_SIZE
from .cache import TagEntry
from .forward import open_upstream, respond
from .paths import ApiPath, upstream_path
from .policy import Refuse, Serve, failure_reason, status_failure
from .pullthrough import grant, reader, the_cache
from .referrerindex import (
    cache_key,
    fallback_entries,
    fallback_tag,
    index_bytes,
    index_entries,
    referrers_answer,
)
from .replies import oci_error
from .routing import PROXY, Route

log = structlog.get_logger("ocimirror.proxy")

#: Pages of an upstream's referrers answer followed at most.
MAX_PAGES = 32
#: What a fallback tag GET accepts: every manifest type, so the guard sees what it names.
_FALLBACK_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]
)
_NEXT = re.compile(r'<([^>]*)>\s*;[^,]*rel="?next"?', re.IGNORECASE)


class Unusable(Exception):
    """An upstream answer the proxy will not pass on (logged; the client gets a 502)."""


@dataclass
class Listing:
    """The referrers of a subject as the upstream gave them."""

    entries: list[dict[str, Any]] = field(default_factory=list)


async def serve_referrers(
    request: web.Request, route: Route, subject: str, artifact_type: str | None
) -> web.StreamResponse:
    """Answer `GET/HEAD /v2/NAME/referrers/SUBJECT` from an HTTP upstream."""
    if request.app[PROXY].cache is not None:
        return await _cached(request, route, subject, artifact_type)
    try:
        got = await listing(request, route, subject, artifact_type)
    except Unusable as e:
        return _unusable(request, route, e)
    if isinstance(got, aiohttp.ClientResponse):
        return await respond(request, route, got)
    return referrers_answer(got.entries, subject, artifact_type)


def _unusable(request: web.Request, route: Route, error: Unusable) -> web.Response:
    request.app[PROXY].metrics.upstream_errors.labels(route.upstream.label, "referrers").inc()
    log.warning(
        "upstream referrers answer refused",
        upstream=route.upstream.label,
        repository=route.upstream_repo,
        error=str(error),
    )
    return oci_error(502, "UNAVAILABLE", "the upstream's referrers answer is not usable")


async def listing(
    request: web.Request, route: Route, subject: str, artifact_type: str | None
) -> Listing | aiohttp.ClientResponse:
    """The referrers of `subject` upstream (the API, else the fallback tag), or the
    upstream's answer to pass on (unread); Unusable for an answer the proxy refuses."""
    absence = request.app[PROXY].referrers_api
    label = route.upstream.label
    if not absence.missing(label):
        query = [("artifactType", artifact_type)] if artifact_type else []
        path = upstream_path(route.upstream_repo, ApiPath(route.name, "referrers", subject), query)
        resp = await _get(request, route, path, mt.OCI_INDEX)
        if resp.status not in (404, 405, 501):
            if resp.status != 200:
                return resp
            return Listing(await _pages(request, route, resp, path.partition("?")[0]))
        if await _no_api(resp):
            absence.note(label)
            log.info("upstream has no referrers API, reading fallback tags", upstream=label)
    return await _fallback(request, route, subject)


async def _get(
    request: web.Request, route: Route, path: str, accept: str
) -> aiohttp.ClientResponse:
    """GET `path` upstream with the client's credentials (pass-through) and `accept`."""
    headers = {"Accept": accept, "Accept-Encoding": "identity"}
    user_agent = request.headers.get("User-Agent")
    if user_agent:
        headers["User-Agent"] = user_agent
    return await open_upstream(request, route, path, method="GET", headers=headers)


async def _no_api(resp: aiohttp.ClientResponse) -> bool:
    """Tell whether a 404/405/501 says the API is missing (to remember), not that the
    repository is (a 404 carrying an OCI error)."""
    try:
        if resp.status != 404:
            return True
        raw = await resp.content.read(64 * 1024)
        doc = _json(raw)
        return not (isinstance(doc, dict) and isinstance(doc.get("errors"), list))
    except (aiohttp.ClientError, TimeoutError):
        return False
    finally:
        resp.release()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _body(resp: aiohttp.ClientResponse) -> bytes:
    """The body of an upstream answer, at most MAX_MANIFEST_SIZE bytes (Unusable beyond)."""
    try:
        raw = await resp.content.read(MAX_MANIFEST_SIZE + 1)
        while len(raw) <= MAX_MANIFEST_SIZE:
            more = await resp.content.read(MAX_MANIFEST_SIZE + 1 - len(raw))
            if not more:
                break
            raw += more
    finally:
        resp.release()
    if len(raw) > MAX_MANIFEST_SIZE:
        raise Unusable(f"the answer is over {MAX_MANIFEST_SIZE} bytes")
    return raw


async def _pages(
    request: web.Request, route: Route, resp: aiohttp.ClientResponse, path: str
) -> list[dict[str, Any]]:
    """Every entry of a referrers answer, its `Link` pages followed on the upstream's own
    origin and path (the same repository and subject) only."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    total = 0
    for _ in range(MAX_PAGES):
        link = resp.headers.get("Link", "")
        here = str(resp.url)
        raw = await _body(resp)
        page = index_entries(raw)
        if page is None:
            raise Unusable("a referrers answer that is no image index")
        entries.extend(page)
        total += len(raw)
        if total > MAX_MANIFEST_SIZE:
            raise Unusable(f"the referrers answer is over {MAX_MANIFEST_SIZE} bytes")
        found = _NEXT.search(link)
        if found is None or not page:
            return entries
        nxt = _same_place(urljoin(here, found.group(1)), route, path)
        if nxt in seen:
            return entries
        seen.add(nxt)
        resp = await _get(request, route, nxt, mt.OCI_INDEX)
        if resp.status != 200:
            status = resp.status
            resp.release()
            raise Unusable(f"a next page answered HTTP {status}")
    raise Unusable(f"more than {MAX_PAGES} pages of referrers")


def _same_place(url: str, route: Route, path: str) -> str:
    """The path and query of a next page's URL; Unusable unless it is on the upstream's
    own origin and at the very path asked for."""
    parts = urlsplit(url)
    base = urlsplit(route.upstream.base)
    if (parts.scheme, parts.netloc.lower()) != (base.scheme, base.netloc.lower()):
        raise Unusable("a next-page link to another origin")
    if unquote(parts.path) != unquote(path) or parts.fragment:
        raise Unusable("a next-page link to another path")
    # The path asked for (as the proxy built it), the upstream's own query (its cursor).
    query = parse_qsl(parts.query, keep_blank_values=True)
    return path + (f"?{urlencode(query)}" if query else "")


async def _fallback(
    request: web.Request, route: Route, subject: str
) -> Listing | aiohttp.ClientResponse:
    """The referrers the fallback tag `sha256-<hex>` lists (none when it is absent)."""
    tag = fallback_tag(subject)
    path = upstream_path(route.upstream_repo, ApiPath(route.name, "manifests", tag), [])
    resp = await _get(request, route, path, _FALLBACK_ACCEPT)
    if resp.status == 404:
        resp.release()
        return Listing()
    if resp.status != 200:
        return resp
    media_type = resp.headers.get("Content-Type", "")
    raw = await _body(resp)
    return Listing(fallback_entries(raw, media_type, subject))


# -- through the cache -------------------------------------------------------------------


async def _cached(
    request: web.Request, route: Route, subject: str, artifact_type: str | None
) -> web.StreamResponse:
    """A referrers answer through the cache: a tag-like entry, fresh for the tag TTL. A
    subject not cached is fetched once for the requests asking at the same time (the same
    client, for a pass-through upstream); the others are answered from what it kept."""
    proxy = request.app[PROXY]
    cache = the_cache(request)
    who = reader(request, route)
    key = cache_key(subject)
    label, repo = route.upstream.label, route.upstream_repo
    entry = await cache.tag(label, repo, key)
    if entry is None:
        flight_key = ("referrers", label, repo, key, who.who)
        flight = proxy.flights.joined(flight_key)
        if flight is None:
            async with proxy.flights.lead(flight_key):
                return await _fetch(request, route, subject, artifact_type, None)
        await flight.wait()
        proxy.metrics.cache_coalesced.labels("referrers").inc()
        entry = await cache.tag(label, repo, key)
    decision = proxy.policy.decide_tag(
        who, key, age=None if entry is None else entry.age, accepted=True
    )
    if isinstance(decision, Serve) and entry is not None:
        kept = await cache.get_manifest(entry.digest)
        if kept is not None:
            proxy.metrics.cache_hits.labels("referrers").inc()
            return referrers_answer(index_entries(kept.raw) or [], subject, artifact_type)
    return await _fetch(request, route, subject, artifact_type, entry)


async def _fetch(
    request: web.Request,
    route: Route,
    subject: str,
    artifact_type: str | None,
    entry: TagEntry | None,
) -> web.StreamResponse:
    """Fetch the whole list upstream, keep it and answer; the kept `entry` (if any) stands
    in when the upstream fails."""
    proxy = request.app[PROXY]
    cache = the_cache(request)
    who = reader(request, route)
    key = cache_key(subject)
    label, repo = route.upstream.label, route.upstream_repo

    async def stale(reason: str, error: str) -> web.Response | None:
        if entry is None or isinstance(proxy.policy.decide_error(who, key, reason), Refuse):
            return None
        kept = await cache.get_manifest(entry.digest)
        if kept is None:
            return None
        proxy.metrics.upstream_errors.labels(label, reason).inc()
        proxy.metrics.cache_stale.labels("referrers").inc()
        log.warning("upstream failed, serving the stale referrers", upstream=label, error=error)
        return referrers_answer(index_entries(kept.raw) or [], subject, artifact_type, stale=True)

    proxy.metrics.cache_misses.labels("referrers").inc()
    try:
        got = await listing(request, route, subject, None)
    except Unusable as e:
        return _unusable(request, route, e)
    except Exception as e:
        reason = failure_reason(e)
        answer = None if reason is None else await stale(reason, str(e) or type(e).__name__)
        if answer is None:
            raise
        return answer
    if isinstance(got, aiohttp.ClientResponse):
        reason = status_failure(got.status)
        answer = None if reason is None else await stale(reason, f"HTTP {got.status}")
        if answer is not None:
            got.release()
            return answer
        return await respond(request, route, got)
    raw = index_bytes(got.entries)
    try:
        await cache.put_manifest(label, repo, key, raw, mt.OCI_INDEX)
    except (OcimirrorError, ValueError) as e:  # the cache failing never fails the answer
        log.warning("referrers not cached", upstream=label, error=str(e))
    grant(request, route, key)
    return referrers_answer(got.entries, subject, artifact_type)


__all__ = ["MAX_PAGES", "Listing", "Unusable", "listing", "serve_referrers"]
