"""The proxy's token endpoint, `/_token[/NAME]`: token requests sent on to the upstream's realm.

Every `repository:NAME:pull` scope is mapped to the upstream's name (others are dropped,
`pull,push` asks for `pull`) and the request forwarded (GET, or the OAuth2 POST form) to
the upstream's real realm; its answer comes back unchanged, got with the client's own
credentials. An upstream without token auth, or one the proxy logs in to itself, gets a
placeholder token; with a cache, so does an unreachable or failing token service, so
that cached images stay pullable (an anonymous token grants no more than anonymous).
"""

from __future__ import annotations

from urllib.parse import urlencode

import aiohttp
import structlog
from aiohttp import web

from .paths import is_repository, pull_scope
from .replies import anonymous_token, oci_error, unauthorized, unsupported
from .routing import PROXY, Proxy
from .upstream import Upstream

log = structlog.get_logger("ocimirror.proxy")

#: What a token request's POST body must be (OAuth2's form).
FORM_TYPE = "application/x-www-form-urlencoded"
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


def map_token_scope(
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
        # OAuth2's token form (RFC 6749) is urlencoded; a multipart body is not read at all
        # (aiohttp's parser fails on one without a boundary).
        if request.content_type != FORM_TYPE:
            return oci_error(415, "UNSUPPORTED", f"a token request's form must be {FORM_TYPE}")
        try:
            form = await request.post()
        except ValueError:
            return oci_error(400, "UNSUPPORTED", "the token request's form cannot be read")
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
            found = map_token_scope(proxy, scope, fixed)
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
