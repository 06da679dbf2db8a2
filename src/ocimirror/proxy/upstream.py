"""One upstream registry of the proxy: its address, repository prefix, names and auth.

Names: the client's `foo` is the upstream's `PREFIX/foo`; on Docker Hub a single name
gets `library/` (`alpine` -> `library/alpine`), after the prefix is applied.

Auth, per upstream:

- `passthrough`: the client's own `Authorization` goes upstream as it is. The upstream's
  bearer challenge is learnt (realm and service) so that the proxy's `/_token` endpoint
  can forward token requests to the real realm.
- `proxy`: the proxy logs in itself and never forwards the client's header: a static
  AUTH_HEADER (`Basic` and `Bearer` ones take part in the token dance, any other scheme is
  sent as it is), or credentials from the config, a credential helper or docker's auth
  files, looked up again every `credentials_refresh` seconds through one keychain kept for
  the upstream's life (auth files are read again only when they changed; a helper runs
  again). Bearer tokens are fetched, cached per scope and renewed before they expire by
  `RegistryClient`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import structlog

from ..auth.challenge import Challenge, parse_challenges
from ..auth.credentials import ANONYMOUS, Credentials, Keychain
from ..client import RegistryClient, endpoint_base, endpoint_for
from ..netpolicy import AddressPolicy
from ..reference import DOCKER_HUB, DOCKER_HUB_API, REPOSITORY_RE, is_docker_hub, is_loopback_host
from ..settings.connection import keychain_from, static_credentials, tls_options
from .settings import UpstreamConfig

log = structlog.get_logger("ocimirror.proxy")

#: A blob's path (`/v2/NAME/blobs/DIGEST`), in an URL or a path with a query.
_BLOB_PATH = re.compile(r"/blobs/[^/?#]+(?:[?#]|$)")
#: Seconds a learnt challenge (or the absence of one) is trusted before asking again.
CHALLENGE_TTL = 600.0
#: How an operator lets followed redirects reach private addresses (in refusals).
PRIVATE_REDIRECTS_HINT = (
    "--allow-private-redirects (allow_private_redirects: true,"
    " $OCIMIRROR_PROXY_ALLOW_PRIVATE_REDIRECTS) allows it"
)


def redirect_policy(allow_private: bool) -> AddressPolicy:
    """Where redirects the proxy follows to another host may lead: public addresses only
    (an upstream could otherwise make the proxy read loopback services, the cloud's metadata
    address or the private network, and hand the bytes to a client), unless allowed."""
    return AddressPolicy(allow_private=allow_private, hint=PRIVATE_REDIRECTS_HINT)


def _static_credentials(header: str) -> tuple[Credentials | None, str | None]:
    """Turn an AUTH_HEADER into credentials (Basic, Bearer) or keep it as a raw header."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if sep:
            return Credentials(username=user, password=password), None
    elif scheme.lower() == "bearer" and value:
        return Credentials(registry_token=value), None
    return None, header.strip()


class Upstream:
    """One upstream registry and how the proxy maps names and authenticates to it."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        force_proxy_auth: bool = False,
        allow_private_redirects: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare the upstream; nothing is sent until the first request. `clock` times
        the credential lookups and the learnt challenge; `allow_private_redirects` lets
        redirects the proxy follows lead to loopback, private and link-local addresses."""
        self.config = config
        self._clock = clock
        self.name = config.name
        self.prefix = config.prefix
        host = config.host
        self.is_hub = is_docker_hub(host)
        #: The host the API is reached at (registry-1.docker.io for Docker Hub).
        self.host = DOCKER_HUB_API if self.is_hub else host
        plain = config.tls.plain_http
        if plain is None:
            plain = is_loopback_host(self.host)
        self.scheme: Literal["http", "https"] = "http" if plain else "https"
        self.base = f"{self.scheme}://{self.host}"
        default_ns = DOCKER_HUB if self.is_hub else host.lower()
        #: containerd `?ns=` values routed here.
        self.namespaces = frozenset(n.lower() for n in (config.namespaces or [default_ns]))
        mode = config.auth
        if mode == "auto":
            mode = "proxy" if config.has_credentials or force_proxy_auth else "passthrough"
        elif mode == "passthrough" and force_proxy_auth:
            raise ValueError(
                f"upstream {self.label}: clients log in to the proxy, so it cannot pass their"
                " credentials through (auth: passthrough)"
            )
        self.mode: Literal["passthrough", "proxy"] = mode
        self.static_header: str | None = None
        credentials = ANONYMOUS
        if config.auth_header is not None:
            creds, raw = _static_credentials(config.auth_header.reveal())
            credentials = creds or ANONYMOUS
            self.static_header = raw
        elif config.credentials is not None:
            credentials = static_credentials(config.credentials) or ANONYMOUS
        #: Credentials are looked up (and again later) through a keychain.
        self._keychain_based = config.credentials is not None and (
            config.credentials.helper is not None
            or config.credentials.docker_config is not False
            or config.credentials.provider is not None
        )
        #: Built at the first lookup and kept: its auth files are read again only when
        #: they change (`DockerConfigSource`), a cloud login renews itself before it expires.
        self._keychain: Keychain | None = None
        #: When credentials were last looked up; None before the first lookup (which a
        #: monotonic clock's small value, as on a machine up for less than
        #: `credentials_refresh`, must not pass for a recent one).
        self._resolved_at: float | None = None
        self._creds_lock = asyncio.Lock()
        options = replace(tls_options(config.tls), plain_http=plain)
        # A registry endpoint (flag, environment) serves the host: only connections move.
        endpoint = endpoint_for(host) or endpoint_for(self.host)
        if endpoint:
            options = replace(options, endpoint=endpoint)
            self.base = endpoint_base(endpoint)
        #: Manifests, tags, referrers, pings, tokens: never queued behind blob bodies.
        self.client = RegistryClient(self.host, credentials=credentials, options=options)
        #: Blob requests, on their own connection pool,
        #: which slow readers of big blobs may fill without starving anything else.
        self.blob_client = RegistryClient(self.host, credentials=credentials, options=options)
        #: Redirects to other hosts (storage, CDNs) that the proxy follows itself: no
        #: credentials, and only to public addresses unless allowed (`redirect_policy`).
        self.redirect_client = RegistryClient(
            self.host,
            credentials=ANONYMOUS,
            options=replace(options, address_policy=redirect_policy(allow_private_redirects)),
        )
        if config.auth_header is not None:
            for c in self.clients:
                c.send_credentials_first()
        self._challenge: Challenge | None = None
        self._challenge_at = 0.0
        self._challenge_known = False
        self._ping_lock = asyncio.Lock()
        #: The status of the last anonymous ping (`challenge()`); None before the first.
        self.ping_status: int | None = None

    @property
    def clients(self) -> tuple[RegistryClient, ...]:
        """Return the clients: the one for everything but blobs, the blobs' one, and the
        one for redirects to other hosts (none for a bucket, `bucketupstream`)."""
        return self.client, self.blob_client, self.redirect_client

    def client_for(self, path: str) -> RegistryClient:
        """Return the client whose pool a request for `path` (or an URL) goes through."""
        return self.blob_client if is_blob_path(path) else self.client

    @property
    def label(self) -> str:
        """Name the upstream in logs and metrics: its name, else its host."""
        return self.name or self.config.host

    def __repr__(self) -> str:
        """Show name, host, prefix and mode."""
        where = f"{self.base}/{self.prefix}" if self.prefix else self.base
        return f"<Upstream {self.name!r} {where} {self.mode}>"

    # -- names ----------------------------------------------------------------------------

    def upstream_repo(self, repo: str) -> str:
        """Map a client's repository to the upstream's (prefix, then `library/` on the Hub)."""
        full = f"{self.prefix}/{repo}" if self.prefix else repo
        if self.is_hub and "/" not in full:
            full = f"library/{full}"
        return full

    def client_repo(self, upstream_repo: str) -> str | None:
        """Map an upstream repository back to the client's name; None outside the prefix."""
        if not self.prefix:
            return upstream_repo
        if upstream_repo.startswith(self.prefix + "/"):
            return upstream_repo[len(self.prefix) + 1 :]
        return None

    def browser_url(self, path: str) -> str:
        """Return the upstream's web page for an image path (`/foo/bar`), as a browser sees it;
        ValueError unless the path is a repository name (nothing to climb out with)."""
        path = path.strip("/")
        if path and not REPOSITORY_RE.fullmatch(path):
            raise ValueError("not a repository name")
        full = "/".join(p for p in (self.prefix, path) if p)
        if self.is_hub:
            if not full:
                return "https://hub.docker.com/"
            name = full.removeprefix("library/")
            if "/" not in name:
                return f"https://hub.docker.com/_/{name}"
            return f"https://hub.docker.com/r/{full}"
        return f"{self.scheme}://{self.config.host}/{full}"

    # -- credentials ------------------------------------------------------------------------

    async def refresh_credentials(self) -> None:
        """Look credentials up again (helpers, auth files) once they are older than allowed."""
        if not self._keychain_based:
            return
        if self._credentials_fresh():
            return
        async with self._creds_lock:
            if self._credentials_fresh():
                return
            assert self.config.credentials is not None
            keychain = self._keychain
            if keychain is None:
                keychain = keychain_from({self.config.host: self.config.credentials})
                self._keychain = keychain
            elif self.config.credentials.provider is None:
                # Ask the sources again: a helper runs anew, an auth file is read again
                # if it changed (a broken one keeps the last good read).
                keychain.invalidate(self.config.host)
            creds = await keychain.resolve(self.config.host)
            for client in self.clients:
                client.set_credentials(creds)
            self._resolved_at = self._clock()
            log.debug("upstream credentials looked up", upstream=self.label, creds=repr(creds))

    def _credentials_fresh(self) -> bool:
        """Tell whether credentials were looked up less than `credentials_refresh` ago."""
        at = self._resolved_at
        return at is not None and self._clock() - at < self.config.credentials_refresh

    # -- challenges ---------------------------------------------------------------------------

    def learn(self, header: str) -> None:
        """Remember the upstream's bearer challenge from a WWW-Authenticate header."""
        for ch in parse_challenges(header):
            if ch.scheme == "bearer" and ch.realm:
                self._challenge = Challenge("bearer", {"realm": ch.realm, "service": ch.service})
                self._challenge_at = self._clock()
                self._challenge_known = True
                return

    @property
    def last_challenge(self) -> Challenge | None:
        """Return the bearer challenge last learnt, however old, without asking."""
        return self._challenge

    async def challenge(self) -> Challenge | None:
        """Return the upstream's bearer challenge (realm, service), pinging once to learn it."""
        fresh = self._clock() - self._challenge_at < CHALLENGE_TTL
        if self._challenge_known and fresh:
            return self._challenge
        async with self._ping_lock:
            if self._challenge_known and self._clock() - self._challenge_at < CHALLENGE_TTL:
                return self._challenge
            resp = await self.client.request("GET", self.base + "/v2/", authenticate=False)
            resp.release()
            self.ping_status = resp.status
            self._challenge = None
            self.learn(resp.headers.get("WWW-Authenticate", ""))
            self._challenge_at = self._clock()
            self._challenge_known = True
            return self._challenge

    # -- requests -------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        client_auth: str | None,
        scopes: frozenset[str],
    ) -> aiohttp.ClientResponse:
        """Send a request for `path` (with query, or an URL) upstream; the answer is unread."""
        url = path if "://" in path else self.base + path
        client = self.client_for(path)
        if self.mode == "proxy":
            await self.refresh_credentials()
            if self.static_header is not None:
                return await client.request(
                    method,
                    url,
                    headers={**headers, "Authorization": self.static_header},
                    authenticate=False,
                )
            return await client.request(method, url, scopes=scopes, headers=headers)
        hdrs = dict(headers)
        if client_auth:
            hdrs["Authorization"] = client_auth
        resp = await client.request(method, url, headers=hdrs, authenticate=False)
        if resp.status == 401:
            self.learn(resp.headers.get("WWW-Authenticate", ""))
        return resp

    async def close(self) -> None:
        """Close the HTTP sessions."""
        for client in self.clients:
            await client.close()


def is_blob_path(path: str) -> bool:
    """Tell whether a path (or an absolute URL) names a blob of the API: `.../blobs/DIGEST`."""
    if "://" in path:
        path = urlsplit(path).path
    return path.startswith("/v2/") and _BLOB_PATH.search(path.partition("?")[0]) is not None
