"""Upstream answers in the client's names: `Location`, `Link`, the bearer challenge.

The challenge's realm becomes the proxy's `/_token[/NAME]` and its scopes the client's
names; URLs on the upstream's API are mapped to the proxy's (a foreign one is left out
of a `Link`, and made absolute in a `Location`). Hop-by-hop headers stay behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..auth.challenge import parse_challenges
from .replies import client_base, quote
from .routing import PROXY, Route
from .upstream import Upstream

#: Rewrites the query of a `Link` URL; None drops the link.
QueryMap = Callable[[list[tuple[str, str]]], list[tuple[str, str]] | None]

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


def rewrite_challenge(header: str, realm: str, scope_map: Callable[[str], str | None]) -> str:
    """Point a bearer challenge at the proxy's realm, scopes in the client's names (those
    without one are left out)."""
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
        out.append(scheme + " " + ",".join(f'{k}="{quote(v)}"' for k, v in params.items()))
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
