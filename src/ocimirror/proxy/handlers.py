"""The request handlers: `/v2/` routed to its upstream, the catalog, tags, metrics, health,
and a browser's redirect to the upstream's page.

`handle_v2` parses the path strictly from its raw form (`paths`): anything but an exact
route is refused before an upstream is asked, and the upstream's path is built from the
validated parts. Manifests and blobs go through the pull-through cache when there is one
(`pullthrough`, `cachedblobs`), else straight upstream (`forward`); referrers are answered
by `referrers` (the upstream's API, else its fallback tag).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..reference import PATH_COMPONENT_RE
from .bucketserve import bucket_answer
from .bucketupstream import BucketUpstream
from .cachedblobs import cached_blob
from .forward import open_upstream, respond_json, upstream_blob_answer, upstream_manifest
from .paths import (
    Refused,
    api_query,
    catalog_query,
    is_repository,
    parse_api_path,
    split_raw,
    unknown_route,
    upstream_path,
)
from .ping import ping
from .pullthrough import cached_manifest
from .referrers import serve_referrers
from .replies import oci_error, unauthorized, unsupported
from .routing import PROXY, Route


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
    if isinstance(route.upstream, BucketUpstream):
        return await bucket_answer(request, route, route.upstream, api, query)
    if api.kind == "manifests":
        return await serve_manifest(request, route, api.reference, path)
    if api.kind == "blobs":
        return await serve_blob(request, route, api.reference, path)
    if api.kind == "tags":
        return await serve_tags(request, route, path)
    return await serve_referrers(request, route, api.reference, dict(query).get("artifactType"))


async def serve_manifest(
    request: web.Request, route: Route, reference: str, path: str
) -> web.StreamResponse:
    """Answer a manifest GET or HEAD (`reference` is a tag or digest, `path` the upstream's
    path with query), through the cache when there is one."""
    if request.app[PROXY].cache is not None:
        return await cached_manifest(request, route, reference, path)
    return await upstream_manifest(request, route, path)


async def serve_blob(
    request: web.Request, route: Route, digest: str, path: str
) -> web.StreamResponse:
    """Answer a blob GET or HEAD, through the cache when there is one."""
    if request.app[PROXY].cache is not None:
        return await cached_blob(request, route, digest, path)
    return await upstream_blob_answer(request, route, path)


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
    if isinstance(upstream, BucketUpstream):
        return oci_error(404, "UNSUPPORTED", "this registry does not list its repositories")
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
    try:
        url = upstream.browser_url(path)
    except ValueError:  # no page to send a browser to (a bucket upstream)
        return web.Response(status=404, text="404 page not found\n")
    raise web.HTTPTemporaryRedirect(url)
