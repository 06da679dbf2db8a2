"""Where a client's request goes: the proxy's shared state and the name mapping per route.

`Proxy` holds what every handler shares (settings, upstreams, client auth, metrics, the
pull-through cache and its policy), kept in the application under `PROXY`. `locate`
routes a client's repository name to an upstream (containerd's `?ns=`, a first path
component naming an upstream, else the default upstream) as a `Route`, which maps names,
paths and token scopes between the client's names and the upstream's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ..reference import DOCKER_HUB, is_docker_hub
from .bucketupstream import BucketUpstream
from .clientauth import ClientAuthenticator
from .flights import Flights
from .metrics import ProxyMetrics
from .policy import PullPolicy
from .referrerindex import ApiAbsence
from .settings import ProxySettings
from .upstream import Upstream

if TYPE_CHECKING:
    from .cache import ProxyCache

_API_PATH = re.compile(r"^(?P<name>.+?)/(?P<kind>manifests|blobs|tags|referrers)/(?P<tail>.*)$")


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
    """Everything the handlers share: settings, upstreams, client auth, metrics, a cache
    and the policy it answers by."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        cache: ProxyCache | None = None,
        metrics: ProxyMetrics | None = None,
        policy: PullPolicy | None = None,
    ) -> None:
        """Build the upstreams from the settings; the pull-through `policy` defaults to
        one keeping tags as long as the cache does (else as the settings say)."""
        self.settings = settings
        force = settings.clients.enabled
        self.upstreams = {
            u.name: (BucketUpstream if u.is_bucket else Upstream)(
                u, force_proxy_auth=force, allow_private_redirects=settings.allow_private_redirects
            )
            for u in settings.upstreams
        }
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
        #: When the cache may answer, and whom (it remembers the upstreams' grants).
        self.policy = policy or PullPolicy(
            tag_ttl=cache.tag_ttl if cache is not None else settings.cache.tag_ttl
        )
        #: Manifest fetches of uncached tags in flight, for later askers to wait on.
        self.flights = Flights()
        #: Upstreams known (for a while) to have no referrers API: fallback tags instead.
        self.referrers_api = ApiAbsence()

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
