"""How a client authenticates to one registry: basic auth, or bearer tokens per scope.

`Authenticator` learns the registry's challenge from a 401 (`learn`), then gives the
`Authorization` header for a set of scopes (`header`): basic auth, the registry token
given as it is, or a bearer token fetched from the challenge's realm and cached per scope
until shortly before it expires. Its credentials are fixed, or come from a `Keychain`,
asked again when they go stale; `renew()` asks it for fresh ones after a refusal, and
tokens got with the old credentials are forgotten.

The HTTP goes through a `TokenTransport` (the registry client: its session, its address
policy, its pace and request counts). Token requests never follow a redirect, and
credentials are refused to a plain-HTTP realm when the registry is reached over HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlencode

import aiohttp
import yarl

from ..errors import AuthError, RegistryError
from .challenge import Challenge, parse_challenges
from .credentials import Keychain
from .source import ANONYMOUS, Credentials

#: Seconds before a token's announced end at which it is no longer used.
TOKEN_MARGIN = 20.0
#: A token's lifetime when the token service does not say (the distribution spec's 60 s).
DEFAULT_TOKEN_LIFETIME = 60.0

AuthScheme = Literal["none", "basic", "bearer"]


class TokenTransport(Protocol):
    """Sends a token request for an `Authenticator`: never following a redirect."""

    async def token_request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request to a token service and return its answer, unread."""
        ...


@dataclass(frozen=True)
class Token:
    """A bearer token and when to stop using it (on the authenticator's clock)."""

    value: str
    expires: float


def scopes_cover(have: frozenset[str], want: frozenset[str]) -> bool:
    """Tell whether a token granted for `have` scopes also serves `want`."""
    for w in want:
        kind, _, rest = w.rpartition(":")
        actions = set(rest.split(","))
        if not any(
            h.rpartition(":")[0] == kind and actions <= set(h.rpartition(":")[2].split(","))
            for h in have
        ):
            return False
    return True


def _scheme_of(url: str) -> str:
    try:
        return yarl.URL(url).scheme.lower()
    except (TypeError, ValueError):
        return ""


def _shown_origin(url: str) -> str:
    """Return `scheme://host:port` of a URL for a message (no path, no query secrets)."""
    try:
        u = yarl.URL(url)
        scheme, host, port = u.scheme.lower(), (u.host or "").lower(), u.port
    except (TypeError, ValueError):
        return "an invalid URL"
    if not host:
        return "an invalid URL"
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


class TokenRefused(AuthError):
    """A token service refused credentials (HTTP 401 or 403); says which, for renewal."""

    def __init__(self, message: str, *, refused: Credentials, status: int, url: str) -> None:
        super().__init__(message, status=status, url=url)
        #: The credentials refused (never shown: their repr hides the secrets).
        self.refused = refused


class Authenticator:
    """Gives the Authorization header for requests to one registry host."""

    def __init__(
        self,
        host: str,
        transport: TokenTransport,
        *,
        credentials: Credentials | None = None,
        keychain: Keychain | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Use fixed `credentials`, or else those `keychain` has for `host`, else none."""
        self.host = host
        self._transport = transport
        self._keychain = keychain if credentials is None else None
        self._credentials = credentials or ANONYMOUS
        self._clock = clock
        #: None until the registry has said how it wants us to authenticate.
        self.scheme: AuthScheme | None = None
        #: The bearer challenge last learnt (realm, service, scopes).
        self.challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], Token] = {}
        self._token_locks: dict[frozenset[str], asyncio.Lock] = {}

    @property
    def credentials(self) -> Credentials:
        """Return the credentials in use (the keychain's last answer when keychain-based)."""
        return self._credentials

    def use(self, credentials: Credentials) -> None:
        """Use other credentials from now on, forgetting tokens got with the old ones."""
        if credentials != self._credentials:
            self._credentials = credentials
            self._tokens.clear()

    async def current(self) -> Credentials:
        """Return the credentials to present now, asking the keychain (cached) if any."""
        if self._keychain is not None:
            self.use(await self._keychain.resolve(self.host))
        return self._credentials

    async def renew(self, refused: Credentials) -> bool:
        """Get fresh credentials after `refused` ones were; True when worth trying again.

        Only credentials that came from a keychain are renewed (fixed ones, and the
        absence of any, stay as they are). When another request has renewed them
        meanwhile, those are used without asking again; else the keychain forgets
        `refused` and is asked anew. The caller retries once when this says True.
        """
        if self._keychain is None or refused.anonymous:
            return False
        if self._credentials != refused:
            return True
        self._keychain.invalidate(self.host, stale=refused)
        self.use(await self._keychain.resolve(self.host))
        return self._credentials != refused

    def present_first(self) -> None:
        """Present the credentials in use from the first request on, unasked: a registry
        token as Bearer, a user or password as Basic (a Bearer challenge still switches to
        tokens fetched with them)."""
        if self._credentials.registry_token:
            self.scheme = "bearer"
        elif self._credentials.username or self._credentials.password:
            self.scheme = "basic"

    def basic_header(self) -> str | None:
        """Return the Basic header for the credentials in use, None without user or password."""
        c = self._credentials
        if not c.username and not c.password:
            return None
        raw = f"{c.username}:{c.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def learn(self, www_authenticate: str, *, sent: str = "") -> bool:
        """Learn how the registry wants us to authenticate from a 401; False if we cannot.

        `sent` is the Authorization header the refused request carried: a request sent
        before a concurrent one learnt the scheme is worth sending again.
        """
        challenges = parse_challenges(www_authenticate)
        for ch in challenges:
            if ch.scheme == "bearer":
                self.scheme = "bearer"
                self.challenge = ch
                return True
        for ch in challenges:
            if ch.scheme == "basic":
                await self.current()
                if sent.startswith("Basic ") or self.basic_header() is None:
                    return False
                self.scheme = "basic"
                return True
        return False

    async def header(self, scopes: frozenset[str], *, secure: bool, stale: str = "") -> str | None:
        """Return the Authorization header for `scopes`; `stale` is a header just refused.

        `secure` tells whether the registry is reached over HTTPS (then credentials never
        go to a plain-HTTP token realm). Nothing is asked of the keychain before the
        registry has asked for credentials.
        """
        if self.scheme not in ("basic", "bearer"):
            return None
        await self.current()
        if self.scheme == "basic":
            return self.basic_header()
        if self._credentials.registry_token:
            return f"Bearer {self._credentials.registry_token}"
        now = self._clock()
        for have, tok in self._tokens.items():
            header = f"Bearer {tok.value}"
            if header != stale and tok.expires > now and scopes_cover(have, scopes):
                return header
        # One fetch per scope set at a time: concurrent requests wait and share it.
        lock = self._token_locks.setdefault(scopes, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(scopes)
            if (
                cached is None
                or cached.expires <= self._clock()
                or f"Bearer {cached.value}" == stale
            ):
                creds = self._credentials
                cached = await self._fetch_token(scopes, secure=secure)
                if creds == self._credentials:  # not renewed meanwhile
                    self._tokens[scopes] = cached
        return f"Bearer {cached.value}"

    async def _fetch_token(self, scopes: frozenset[str], *, secure: bool) -> Token:
        """Fetch a bearer token for `scopes` from the challenge's realm."""
        assert self.challenge is not None
        realm = self.challenge.realm
        if not realm:
            raise AuthError(f"{self.host}: bearer challenge without a realm")
        service = self.challenge.service
        creds = self._credentials
        sorted_scopes = sorted(scopes)
        basic = self.basic_header()
        if (creds.identity_token or basic) and secure and _scheme_of(realm) != "https":
            raise AuthError(
                f"{self.host}: refused to send credentials to the token service"
                f" {_shown_origin(realm)}: it is not HTTPS",
                url=realm,
            )
        if creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "service": service,
                "client_id": "ocimirror",
                "access_type": "offline",
            }
            if sorted_scopes:
                form["scope"] = " ".join(sorted_scopes)
            resp = await self._transport.token_request("POST", realm, headers={}, data=form)
            async with resp:
                if resp.status not in (404, 405):
                    return await self._token_from(resp, realm, creds)
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params += [("scope", s) for s in sorted_scopes]
        headers = {}
        if basic:
            headers["Authorization"] = basic
            params.append(("account", creds.username))
        sep = "&" if "?" in realm else "?"
        url = realm + (sep + urlencode(params) if params else "")
        resp = await self._transport.token_request("GET", url, headers=headers)
        async with resp:
            return await self._token_from(resp, realm, creds)

    async def _token_from(
        self, resp: aiohttp.ClientResponse, realm: str, creds: Credentials
    ) -> Token:
        if resp.status in (401, 403):
            who = creds.username or "anonymous"
            raise TokenRefused(
                f"{self.host}: the token service {realm} refused the credentials of {who}"
                f" (HTTP {resp.status})",
                refused=creds,
                status=resp.status,
                url=realm,
            )
        if resp.status != 200:
            raise RegistryError(
                f"{self.host}: token service {realm} answered HTTP {resp.status}",
                status=resp.status,
                url=realm,
            )
        try:
            body = await resp.json(content_type=None)
            value = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            value = None
            body = {}
        if not isinstance(value, str) or not value:
            raise AuthError(f"{self.host}: token service {realm} returned no token", url=realm)
        expires_in = body.get("expires_in")
        lifetime = (
            float(expires_in) if isinstance(expires_in, int | float) else DEFAULT_TOKEN_LIFETIME
        )
        lifetime = max(lifetime - TOKEN_MARGIN, lifetime / 2)
        return Token(value, self._clock() + lifetime)
