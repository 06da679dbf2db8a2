"""The aiohttp application of `ocimirror proxy`: a pull-only registry under its own name.

Routes:

- `/v2/` answers the ping: forwarded to a lone pass-through upstream (its challenge
  rewritten), else answered here (401 with the proxy's own bearer challenge when some
  pass-through upstream wants tokens, 200 otherwise).
- `/v2/NAME/{manifests,blobs,tags,referrers}/...` (GET, HEAD), parsed strictly from the
  raw path (`paths`: anything but an exact route is refused before an upstream is asked,
  and the upstream's path is built from the validated parts): NAME is routed to an
  upstream (containerd's `?ns=`, else a first path component naming an upstream, else
  the default upstream) and rewritten to the upstream's name (prefix, `library/`).
  Answers are rewritten back: `Location`, `Link`, the bearer challenge (realm -> the
  proxy's `/_token[/NAME]`, scopes -> the client's names) and the `name` of a tag list.
  Blob redirects to other hosts pass through unless `stream_blobs`.
- `/v2/_catalog`: the default upstream's repositories under its prefix.
- `/_token`, `/_token/NAME` (GET, and the OAuth2 POST form): every `repository:NAME:pull`
  scope is mapped to the upstream's name (others are dropped, `pull,push` asks for `pull`)
  and the request forwarded to the upstream's real realm; its answer comes back
  unchanged, with the client's own credentials. An upstream without
  token auth, or one the proxy logs in to itself, gets a placeholder token.
- POST, PUT, PATCH and DELETE anywhere but `/_token`: 405 `UNSUPPORTED`, nothing sent on.
- `/metrics`, `/healthz`; any other path whose segments are repository path components
  redirects a browser to the upstream's page.

Error answers carry an OCI code and a short message of the proxy's own: never an
upstream's host, prefix, URL or error text (those go to the log).

The pull-through cache: manifests go through `serve_manifest` and blobs through
`serve_blob`; with a cache (`--cache`, or given to `make_proxy_app(..., cache=)`, kept as
`Proxy.cache`) they hand over to `pullthrough`, which uses `open_upstream` and `respond`
for what the cache does not have, and `open_upstream_blob` as the upstream opener of a
single-flight blob fetch. With a cache the ping and `/_token` also answer on their own when
the upstream cannot be reached, so that cached images can still be pulled.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..auth.challenge import Challenge
from ..client import READ_SIZE
from ..errors import AuthError, NotFound, OcimirrorError, RateLimited
from ..reference import DOCKER_HUB, PATH_COMPONENT_RE, is_docker_hub
from .clientauth import CHALLENGE, ClientAuthenticator
from .errorbody import error_body
from .metrics import ProxyMetrics
from .paths import (
    Refused,
    api_query,
    catalog_query,
    is_repository,
    parse_api_path,
    pull_scope,
    split_raw,
    unknown_route,
    upstream_path,
)
from .settings import ProxySettings
from .upstream import Upstream

if TYPE_CHECKING:
    from .cache import ProxyCache, UpstreamBlob

log = structlog.get_logger("ocimirror.proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Rewrites the query of a `Link` URL; None drops the link.
QueryMap = Callable[[list[tuple[str, str]]], list[tuple[str, str]] | None]

#: The token handed out when the upstream wants none; never forwarded upstream.
ANONYMOUS_TOKEN = "ocimirror-proxy-anonymous"
#: The `service` of the proxy's own challenge (several upstreams behind one ping).
PROXY_SERVICE = "ocimirror-proxy"
API_VERSION = {"Docker-Distribution-Api-Version": "registry/2.0"}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_API_PATH = re.compile(r"^(?P<name>.+?)/(?P<kind>manifests|blobs|tags|referrers)/(?P<tail>.*)$")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "date",
        "server",
        "set-cookie",
    }
)
_FORWARDED = (
    "Accept",
    "Accept-Encoding",
    "Range",
    "If-Range",
    "If-None-Match",
    "If-Modified-Since",
    "User-Agent",
)


@dataclass(frozen=True)
class Route:
    """Where a client's repository goes: the upstream, the route component, the name."""

    upstream: Upstream
    #: The client's first path component naming the upstream, with its slash ("" if none).
    route: str
    #: The client's repository without the route component.
    repo: str

    @property
    def name(self) -> str:
        """Return the repository name as the client sees it."""
        return self.route + self.repo

    @property
    def upstream_repo(self) -> str:
        """Return the repository name upstream."""
        return self.upstream.upstream_repo(self.repo)

    @property
    def scopes(self) -> frozenset[str]:
        """Return the token scopes a pull of this repository needs upstream."""
        return frozenset({f"repository:{self.upstream_repo}:pull"})

    def client_name(self, upstream_repo: str) -> str | None:
        """Map an upstream repository name to the client's; None when it has none."""
        if upstream_repo == self.upstream_repo:
            return self.name
        repo = self.upstream.client_repo(upstream_repo)
        return None if repo is None else self.route + repo

    def client_path(self, path: str) -> str | None:
        """Map an upstream `/v2/...` path to the client's; None when it has none."""
        if path in ("/v2/", "/v2/_catalog"):
            return path
        m = _API_PATH.match(path.removeprefix("/v2/")) if path.startswith("/v2/") else None
        if m is None:
            return None
        name = self.client_name(m["name"])
        return None if name is None else f"/v2/{name}/{m['kind']}/{m['tail']}"

    def client_scope(self, scope: str) -> str | None:
        """Map an upstream token scope to the client's (`repository:NAME:pull`); None for
        one the client has no name for (another type, a name outside the prefix), which
        its `/_token` would not take anyway."""
        parts = scope.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            return None
        mapped = self.client_name(parts[1])
        return None if mapped is None else f"repository:{mapped}:pull"


class Proxy:
    """Everything the handlers share: settings, upstreams, client auth, metrics, a cache."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        cache: ProxyCache | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        """Build the upstreams from the settings."""
        from .pullthrough import Flights, Grants

        self.settings = settings
        force = settings.clients.enabled
        self.upstreams = {u.name: Upstream(u, force_proxy_auth=force) for u in settings.upstreams}
        self.named = {n: u for n, u in self.upstreams.items() if n}
        self.default = (
            self.upstreams.get(settings.default) if settings.default is not None else None
        )
        self.metrics = metrics or ProxyMetrics(
            lambda: list(self.upstreams.values()),
            lambda: self.cache.store_requests() if self.cache is not None else None,
        )
        self.auth = ClientAuthenticator(
            [t.reveal() for t in settings.clients.tokens], settings.clients.htpasswd
        )
        #: The pull-through cache, for `serve_manifest` and `serve_blob` (None: none).
        self.cache = cache
        #: Who the pass-through upstreams let read what, for serving from the cache.
        self.grants = Grants()
        #: Manifest fetches of uncached tags in flight, for later askers to wait on.
        self.flights = Flights()

    @property
    def only(self) -> Upstream | None:
        """Return the upstream when there is exactly one."""
        return next(iter(self.upstreams.values())) if len(self.upstreams) == 1 else None

    def locate(self, name: str, ns: str | None = None) -> Route | None:
        """Route a client's repository name: `?ns=`, a first component naming an upstream,
        else the default upstream; None when nothing takes it."""
        if ns:
            key = ns.strip().lower()
            key = DOCKER_HUB if is_docker_hub(key) else key
            for u in self.upstreams.values():
                if key in u.namespaces:
                    return Route(u, "", name)
        first, sep, rest = name.partition("/")
        if sep and first in self.named:
            return Route(self.named[first], first + "/", rest)
        if self.default is not None:
            return Route(self.default, "", name)
        return None

    def token_path(self, upstream: Upstream) -> str:
        """Return the path of the proxy's token endpoint for an upstream."""
        return f"/_token/{upstream.name}" if upstream.name else "/_token"

    async def close(self) -> None:
        """Close every upstream session."""
        for u in self.upstreams.values():
            await u.close()


PROXY = web.AppKey("proxy", Proxy)


# -- small answers ---------------------------------------------------------------------


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


# -- rewriting -----------------------------------------------------------------------------


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def rewrite_challenge(header: str, realm: str, scope_map: Callable[[str], str | None]) -> str:
    """Point a bearer challenge at the proxy's realm, scopes in the client's names (those
    without one are left out)."""
    from ..auth.challenge import parse_challenges

    out = []
    for ch in parse_challenges(header):
        params = dict(ch.params)
        if ch.scheme == "bearer":
            params["realm"] = realm
            if "scope" in params:
                mapped = (scope_map(s) for s in params.pop("scope").split())
                scopes = " ".join(s for s in mapped if s is not None)
                if scopes:
                    params["scope"] = scopes
            scheme = "Bearer"
        else:
            scheme = ch.scheme.capitalize()
        out.append(scheme + " " + ",".join(f'{k}="{_quote(v)}"' for k, v in params.items()))
    return ", ".join(out)


def _client_url(
    url: str,
    upstream: Upstream,
    path_map: Callable[[str], str | None],
    base: str,
    query_map: QueryMap | None = None,
) -> str | None:
    """Map an upstream URL to the proxy's (relative if it was); None for a foreign one."""
    absolute = urljoin(upstream.base + "/", url)
    parts = urlsplit(absolute)
    if parts.netloc.lower() != upstream.host.lower():
        return None
    path = path_map(parts.path)
    if path is None:
        return None
    query = parts.query
    if query_map is not None:
        items = query_map(parse_qsl(query, keep_blank_values=True))
        if items is None:
            return None
        query = urlencode(items)
    local = path + (f"?{query}" if query else "")
    return local if url.startswith("/") else base + local


def rewrite_location(value: str, route: Route, base: str) -> str:
    """Rewrite a `Location` to the proxy when it points at the upstream's API."""
    mapped = _client_url(value, route.upstream, route.client_path, base)
    if mapped is not None:
        return base + mapped if mapped.startswith("/") else mapped
    return urljoin(route.upstream.base + "/", value)


def rewrite_links(
    value: str,
    route: Route,
    base: str,
    query_map: QueryMap | None = None,
) -> str | None:
    """Rewrite `Link: <URL>; rel="next"` values to the client's names; None to drop them."""
    out = []
    for part in re.finditer(r"<([^>]*)>([^,]*)", value):
        url, params = part.group(1), part.group(2)
        mapped = _client_url(url, route.upstream, route.client_path, base, query_map)
        if mapped is None:
            continue
        out.append(f"<{mapped}>{params}")
    return ", ".join(out) if out else None


def response_headers(
    request: web.Request,
    route: Route,
    resp: aiohttp.ClientResponse,
    *,
    link_query: QueryMap | None = None,
) -> CIMultiDict[str]:
    """Copy an upstream answer's headers for the client, rewritten to its names."""
    proxy = request.app[PROXY]
    base = client_base(request)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in resp.headers.items():
        lower = key.lower()
        new: str | None = value
        if lower in _HOP_BY_HOP:
            continue
        if lower == "location":
            new = rewrite_location(value, route, base)
        elif lower == "link":
            new = rewrite_links(value, route, base, link_query)
        elif lower == "www-authenticate":
            if route.upstream.mode == "proxy":
                continue
            realm = base + proxy.token_path(route.upstream)
            new = rewrite_challenge(value, realm, route.client_scope)
        if new is not None:
            out.add(key, new)
    return out


# -- upstream requests -----------------------------------------------------------------------


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
            sent = 0
            try:
                async for chunk in resp.content.iter_chunked(READ_SIZE):
                    await out.write(chunk)
                    sent += len(chunk)
            except (aiohttp.ClientError, TimeoutError) as e:
                proxy.metrics.upstream_errors.labels(label, "broken_body").inc()
                log.warning("upstream body broken", upstream=label, path=request.path, error=str(e))
                out.force_close()
                return out
            finally:
                proxy.metrics.bytes.labels(label, "upstream").inc(sent)
        await out.write_eof()
        return out
    finally:
        resp.release()


async def follow_redirects(
    request: web.Request,
    route: Route,
    resp: aiohttp.ClientResponse,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """Follow an upstream's redirects (storage, CDN) on the proxy's side.

    The upstream's own host gets the usual credentials, any other host none; `headers`
    replace the client's forwarded ones when given.
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
        # Redirects lead blobs to storage: the blobs' pool, as what led there.
        resp = await route.upstream.blob_client.request(
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
    from .cache import UpstreamBlob

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


# -- the cache hooks -------------------------------------------------------------------------


async def serve_manifest(
    request: web.Request, route: Route, reference: str, path: str
) -> web.StreamResponse:
    """Answer a manifest GET or HEAD (`reference` is a tag or digest, `path` the upstream's
    path with query), through the cache when there is one."""
    if request.app[PROXY].cache is not None:
        from .pullthrough import cached_manifest

        return await cached_manifest(request, route, reference, path)
    return await upstream_manifest(request, route, path)


async def upstream_manifest(request: web.Request, route: Route, path: str) -> web.StreamResponse:
    """Answer a manifest GET or HEAD from the upstream, as it answers."""
    resp = await open_upstream(request, route, path)
    return await respond(request, route, resp)


async def serve_blob(
    request: web.Request, route: Route, digest: str, path: str
) -> web.StreamResponse:
    """Answer a blob GET or HEAD, through the cache when there is one."""
    if request.app[PROXY].cache is not None:
        from .pullthrough import cached_blob

        return await cached_blob(request, route, digest, path)
    return await upstream_blob_answer(request, route, path)


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
    except ValueError:
        doc = None
    if isinstance(doc, dict) and rewrite(doc):
        raw = json.dumps(doc).encode()
    return await respond(request, route, resp, body=raw, link_query=link_query)


# -- handlers -----------------------------------------------------------------------------------


async def serve_tags(request: web.Request, route: Route, path: str) -> web.StreamResponse:
    """Answer a tag list, its `name` and `Link` in the client's names."""
    resp = await open_upstream(request, route, path, identity=True)

    def rename(doc: dict[str, Any]) -> bool:
        if "name" not in doc:
            return False
        doc["name"] = route.name
        return True

    return await respond_json(request, route, resp, rename)


async def serve_catalog(request: web.Request) -> web.StreamResponse:
    """Answer `/v2/_catalog` from the default upstream: its repositories under the prefix."""
    proxy = request.app[PROXY]
    upstream = proxy.default or proxy.only
    if upstream is None:
        return oci_error(404, "UNSUPPORTED", "no default upstream to list repositories of")
    request["upstream"] = upstream.label
    route = Route(upstream, "", "")
    prefix = upstream.prefix + "/" if upstream.prefix else ""
    query = catalog_query(request.query.items(), prefix)

    def link_query(items: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
        out = []
        for k, v in items:
            if k == "last":
                mapped = upstream.client_repo(v)
                if mapped is None:
                    return None  # the next page lies beyond the prefix: this was the last
                v = mapped
            out.append((k, v))
        return out

    path = "/v2/_catalog" + (f"?{urlencode(query)}" if query else "")
    resp = await open_upstream(
        request, route, path, scopes=frozenset({"registry:catalog:*"}), identity=True
    )

    def rename(doc: dict[str, Any]) -> bool:
        if not isinstance(doc.get("repositories"), list):
            return False
        repos = [upstream.client_repo(r) for r in doc["repositories"] if isinstance(r, str)]
        doc["repositories"] = [r for r in repos if r is not None]
        return True

    return await respond_json(request, route, resp, rename, link_query=link_query)


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
        return _bearer_challenge(request, challenge)
    return None


def _bearer_challenge(request: web.Request, challenge: Challenge) -> web.Response:
    """A 401 with an upstream's bearer challenge, its realm the proxy's `/_token`."""
    params = f'realm="{client_base(request)}/_token"'
    if challenge.service:
        params += f',service="{_quote(challenge.service)}"'
    return oci_error(
        401,
        "UNAUTHORIZED",
        "authentication required",
        headers={"WWW-Authenticate": f"Bearer {params}"},
    )


def offline_ping(request: web.Request, upstream: Upstream, reason: str, error: str) -> web.Response:
    """Answer the ping of a lone pass-through upstream that failed, so that cached images
    can still be pulled: its last bearer challenge (realm: the proxy), else 200."""
    proxy = request.app[PROXY]
    proxy.metrics.upstream_errors.labels(upstream.label, reason).inc()
    log.warning("upstream failed, the ping is answered by the proxy", error=error)
    challenge = upstream.last_challenge
    if challenge is None:
        return web.json_response({}, headers=API_VERSION)
    return _bearer_challenge(request, challenge)


async def handle_v2(request: web.Request) -> web.StreamResponse:
    """Route a `/v2/` request to its upstream (GET and HEAD only), the path parsed strictly
    from its raw form (`paths.parse_api_path`): a path that is no exact route is refused
    here and never reaches an upstream."""
    proxy = request.app[PROXY]
    raw = request.raw_path.partition("?")[0]
    rest = "" if raw in ("/v2", "/v2/") else raw[4:] if raw.startswith("/v2/") else None
    request["kind"] = "ping" if rest == "" else "other"
    if request.method not in ("GET", "HEAD"):
        request["kind"] = "refused"
        return unsupported(request.method)
    if not await proxy.auth.check(request.headers.get("Authorization")):
        return unauthorized()
    if rest is None:  # a path the router saw normalised (`/x/../v2/...`): refused as sent
        raise unknown_route()
    if not rest:
        return await ping(request)
    if split_raw(rest) == ["_catalog"]:
        request["kind"] = "catalog"
        return await serve_catalog(request)
    try:
        api = parse_api_path(rest)
    except Refused:
        request["kind"] = "refused"
        raise
    request["kind"] = {"manifests": "manifest", "blobs": "blob"}.get(api.kind, api.kind)
    route = proxy.locate(api.name, request.query.get("ns"))
    if route is None:
        raise unknown_route()
    request["upstream"] = route.upstream.label
    if not is_repository(route.repo):
        raise Refused(400, "NAME_INVALID", "invalid repository name")
    query = api_query(api.kind, request.query.items())
    path = upstream_path(route.upstream_repo, api, query)
    if api.kind == "manifests":
        return await serve_manifest(request, route, api.reference, path)
    if api.kind == "blobs":
        return await serve_blob(request, route, api.reference, path)
    if api.kind == "tags":
        return await serve_tags(request, route, path)
    resp = await open_upstream(request, route, path)
    return await respond(request, route, resp)


#: The fields of a token request passed on to the upstream's realm (others are dropped).
TOKEN_FIELDS = frozenset(
    {
        "service",
        "scope",
        "account",
        "client_id",
        "offline_token",
        "grant_type",
        "username",
        "password",
        "refresh_token",
        "access_type",
    }
)


def _map_token_scope(
    proxy: Proxy, scope: str, fixed: Upstream | None
) -> tuple[Upstream, str] | None:
    """Map one requested scope to the upstream's names (`repository:NAME:pull`); None for
    a scope the proxy does not pass on (`paths.pull_scope`), or a name it cannot map."""
    name = pull_scope(scope)
    if name is None:
        return None
    if fixed is not None:
        repo = name
        if fixed.name and name.startswith(fixed.name + "/"):
            repo = name[len(fixed.name) + 1 :]
        upstream = fixed
    else:
        route = proxy.locate(name)
        if route is None:
            return None
        upstream, repo = route.upstream, route.repo
    mapped = upstream.upstream_repo(repo)
    if not is_repository(repo) or not is_repository(mapped):
        return None
    return upstream, f"repository:{mapped}:pull"


async def handle_token(request: web.Request) -> web.StreamResponse:
    """Forward a token request to the upstream's realm, scopes in the upstream's names."""
    proxy = request.app[PROXY]
    request["kind"] = "token"
    if request.method not in ("GET", "POST"):
        return unsupported(request.method)
    if not await proxy.auth.check(request.headers.get("Authorization")):
        return unauthorized()
    name = request.match_info.get("name", "")
    fixed: Upstream | None = None
    if name:
        fixed = proxy.named.get(name)
        if fixed is None:
            return oci_error(404, "NAME_UNKNOWN", f"no upstream named {name!r}")
    else:
        fixed = proxy.only
    fields: list[tuple[str, str]]
    if request.method == "POST":
        form = await request.post()
        fields = [(k, v) for k, v in form.items() if isinstance(v, str)]
    else:
        fields = list(request.query.items())
    chosen = fixed
    out: list[tuple[str, str]] = []
    for key, value in fields:
        if key not in TOKEN_FIELDS:
            continue
        if key != "scope":
            out.append((key, value))
            continue
        mapped = []
        for scope in value.split():
            found = _map_token_scope(proxy, scope, fixed)
            if found is None:
                log.info("token scope dropped: only repository pull scopes are passed on")
                continue
            upstream, new = found
            if chosen is None:
                chosen = upstream
            elif upstream is not chosen:
                log.warning("token scope for another upstream dropped")
                continue
            mapped.append(new)
        if mapped:
            out.append((key, " ".join(mapped)))
    chosen = chosen or proxy.default
    if chosen is None:
        return anonymous_token()
    request["upstream"] = chosen.label
    if chosen.mode == "proxy":
        # The proxy logs in itself and clients never see the upstream's challenge; a token
        # got with its credentials must not reach them (it could carry `push`).
        return anonymous_token()
    try:
        return await forward_token(request, chosen, out)
    except (aiohttp.ClientError, TimeoutError) as e:
        if proxy.cache is None:
            raise
        # Cached images stay pullable; an anonymous token grants no more than anonymous.
        proxy.metrics.upstream_errors.labels(chosen.label, "token_unreachable").inc()
        log.warning("token service unreachable, anonymous token given", error=str(e))
        return anonymous_token()


async def forward_token(
    request: web.Request, chosen: Upstream, out: list[tuple[str, str]]
) -> web.StreamResponse:
    """Forward a token request (its fields in the upstream's names) to the upstream's realm."""
    proxy = request.app[PROXY]
    challenge = await chosen.challenge()
    if challenge is None:
        return anonymous_token()
    if challenge.service:
        if any(k == "service" for k, _ in out):
            out = [(k, challenge.service if k == "service" else v) for k, v in out]
        else:
            out.insert(0, ("service", challenge.service))
    auth = request.headers.get("Authorization")
    headers = {"Authorization": auth} if auth else {}
    realm = challenge.realm
    client = chosen.client
    if request.method == "POST":
        resp = await client.request("POST", realm, headers=headers, data=out, authenticate=False)
    else:
        url = realm + (("&" if "?" in realm else "?") + urlencode(out) if out else "")
        resp = await client.request("GET", url, headers=headers, authenticate=False)
    try:
        body = await resp.read()
    finally:
        resp.release()
    if resp.status >= 500:
        proxy.metrics.upstream_errors.labels(chosen.label, f"token_http_{resp.status}").inc()
        if proxy.cache is not None:
            log.warning("token service failed, anonymous token given", status=resp.status)
            return anonymous_token()
    keep = ("Content-Type", "Cache-Control", "WWW-Authenticate", "Pragma")
    answer = {k: resp.headers[k] for k in keep if k in resp.headers}
    return web.Response(status=resp.status, body=body, headers=answer)


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    """Serve the Prometheus metrics."""
    request["kind"] = "metrics"
    if request.method not in ("GET", "HEAD"):
        return unsupported(request.method)
    body = request.app[PROXY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def handle_health(request: web.Request) -> web.StreamResponse:
    """Answer liveness checks."""
    request["kind"] = "health"
    return web.Response(text="ok\n")


async def handle_other(request: web.Request) -> web.StreamResponse:
    """Send a browser to the upstream's page for the image (unless redirects are off)."""
    proxy = request.app[PROXY]
    request["kind"] = "redirect"
    if request.method not in ("GET", "HEAD"):
        request["kind"] = "refused"
        return unsupported(request.method)
    if not proxy.settings.browser_redirects:
        return web.Response(status=404, text="404 page not found\n")
    # From the raw path, each segment a repository path component: nothing that could
    # climb out of the prefix on the upstream's site (`..`, `%2F`) is passed on.
    parts = [p for p in split_raw(request.raw_path.partition("?")[0]) if p]
    upstream = proxy.default or proxy.only
    if parts and parts[0] in proxy.named:
        upstream, parts = proxy.named[parts[0]], parts[1:]
    if upstream is None or not all(PATH_COMPONENT_RE.fullmatch(p) for p in parts):
        return web.Response(status=404, text="404 page not found\n")
    path = "/".join(parts)
    request["upstream"] = upstream.label
    raise web.HTTPTemporaryRedirect(upstream.browser_url(path))


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
        proxy.metrics.upstream_errors.labels(request.get("upstream", "-"), "unreachable").inc()
        log.warning("upstream failed", path=request.path, error=str(e) or type(e).__name__)
        resp = oci_error(502, "UNAVAILABLE", "the upstream registry could not be reached")
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


def make_proxy_app(
    settings: ProxySettings,
    *,
    cache: ProxyCache | None = None,
    metrics: ProxyMetrics | None = None,
) -> web.Application:
    """Build the proxy's aiohttp application (upstream sessions close with it).

    Without a `cache` given, one is opened when the settings name one (a directory or an
    object store), and closed with the application; a cache given is the caller's to close.
    """
    owned: ProxyCache | None = None
    c = settings.cache
    if cache is None and c.enabled:
        from .cache import ProxyCache
        from .cachestore import open_store

        store = open_store(c.store, c.store_options()) if c.store else None
        cache = owned = ProxyCache(
            c.directory,
            store=store,
            store_name=c.store or "",
            max_bytes=c.max_size,
            tag_ttl=c.tag_ttl,
        )
    proxy = Proxy(settings, cache=cache, metrics=metrics)
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
