"""Who may drive `ocimirror serve`: the Host and Origin of a request, its token, its body type.

A web page the operator visits must not be able to use the service, whatever the bind:

- **Host.** When the service listens on one address (loopback without tokens, always), a
  request's `Host` must name it: that address with the served port, or for loopback
  `localhost`, `127.0.0.1` or `[::1]` with the port; or a name allowed explicitly
  (`--allowed-host`, `api.allowed_hosts`, `$OCIMIRROR_ALLOWED_HOSTS`; `*` allows any).
  This stops DNS rebinding (a page on `evil.example` whose name now points at 127.0.0.1).
  Bound to every interface (0.0.0.0 or ::, which needs tokens or `--allow-unauthenticated`)
  the names the service is reached by are unknown (a Cloud Run URL, a load balancer), so
  Host is checked only when allowed hosts are given; a rebinding page has no token.
- **Origin.** A request with an `Origin` header (browsers send one on every cross-origin
  request and on POSTs) must come from the page's own origin: the same host and port as
  its `Host`, or an allowed host. `Origin: null` (sandboxed frames, data: URLs) is foreign.
- **Tokens.** With API tokens configured every route but `/healthz` and `/readyz` needs
  one, compared in constant time: `Authorization: Bearer TOKEN`, or for reading (GET and
  HEAD) the `ocimirror_token` cookie that `GET /?token=TOKEN` sets for the dashboard
  (HttpOnly, SameSite=Strict). Writes take the header only.
- **ID tokens.** With `api.oidc` a Bearer that is not a static token may be an OIDC ID
  token (Cloud Scheduler's OIDC call), verified by `oidc.OidcVerifier`; it counts as a
  token everywhere.
- **Body type.** API writes need `Content-Type: application/json`: a browser sends that
  cross-origin only after a CORS preflight, which the service never answers. `POST /` (the
  Cloud Run mirror contract, called by curl and Cloud Scheduler with any type) takes any
  type when the caller is authenticated: a valid token, or `--allow-unauthenticated`.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .oidc import OidcVerifier

#: Routes open to anyone (no token): liveness and readiness say nothing about the mirrors.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: The cookie the dashboard's page and its polling authenticate with.
TOKEN_COOKIE = "ocimirror_token"
#: What an API write must be sent as.
JSON_TYPE = "application/json"
#: Names of the loopback interface a browser may use for a service bound to loopback.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_wildcard(address: str) -> bool:
    """Tell whether a bind address means every interface (0.0.0.0, ::, or empty)."""
    try:
        return address == "" or ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracketed(address: str) -> str:
    """An address as it appears in a Host header: IPv6 in brackets."""
    bare = address.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` of a Host header, lower-cased (IPv6 in brackets); None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/?#@\\ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        if value.count(":") > 1:
            return None
        name, sep, after = value.partition(":")
        port_text = after if sep else None
    if not name or name == "[]":
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


@dataclass(frozen=True)
class AccessPolicy:
    """The access rules of one running service (see the module docstring)."""

    tokens: tuple[str, ...] = ()
    bind: str = "127.0.0.1"
    port: int = 8080
    allowed_hosts: tuple[str, ...] = ()
    allow_unauthenticated: bool = False
    oidc: OidcVerifier | None = None

    @classmethod
    def of(
        cls,
        *,
        tokens: Sequence[str] = (),
        bind: str = "127.0.0.1",
        port: int = 8080,
        allowed_hosts: Iterable[str] = (),
        allow_unauthenticated: bool = False,
        oidc: OidcVerifier | None = None,
    ) -> AccessPolicy:
        """Build a policy; allowed host names are trimmed and lower-cased."""
        names = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        return cls(tuple(tokens), bind, port, names, allow_unauthenticated, oidc)

    @property
    def authenticates(self) -> bool:
        """Tell whether callers must authenticate (static tokens or OIDC ID tokens)."""
        return bool(self.tokens) or self.oidc is not None

    # -- Host and Origin ------------------------------------------------------------------

    @property
    def checks_host(self) -> bool:
        """Tell whether Host is checked: bound to one address, or allowed hosts are given."""
        if "*" in self.allowed_hosts:
            return False
        return bool(self.allowed_hosts) or not is_wildcard(self.bind)

    def served_names(self) -> frozenset[str]:
        """The names of the bound address itself (for loopback: every loopback name)."""
        names = {_bracketed(self.bind.lower())} if not is_wildcard(self.bind) else set()
        if is_wildcard(self.bind) or _is_loopback(self.bind):
            names.update(LOOPBACK_NAMES)
        return frozenset(names)

    def _listed(self, name: str) -> bool:
        """Tell whether a host name (IPv6 in brackets) is allowed by name."""
        return name in self.allowed_hosts or (
            name.startswith("[") and name[1:-1] in self.allowed_hosts
        )

    def host_ok(self, host: str | None) -> bool:
        """Tell whether a request's Host header names this service."""
        if not self.checks_host:
            return True
        parts = split_host(host or "")
        if parts is None:
            return False
        name, port = parts
        if self._listed(name):
            return True
        return name in self.served_names() and (port or 80) == self.port

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """Tell whether an Origin header (None: absent) is this service's own origin."""
        if origin is None:
            return True
        try:
            url = urlsplit(origin.strip())
            port = url.port
        except ValueError:
            return False
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            return False
        name = _bracketed(url.hostname.lower())
        if self._listed(name):
            return True
        own = split_host(host or "")
        if own is None:
            return False
        default = 443 if url.scheme == "https" else 80
        own_port = own[1] if own[1] is not None else default
        return name == own[0] and (port or default) == own_port

    # -- tokens and body types --------------------------------------------------------------

    def token_ok(self, given: str) -> bool:
        """Tell whether `given` is one of the tokens, comparing each in constant time."""
        candidate = given.strip().encode()
        ok = False
        for token in self.tokens:
            # Every token is compared (no early exit), each in constant time.
            ok |= hmac.compare_digest(candidate, token.encode())
        return ok and bool(candidate)

    async def bearer_ok(self, given: str) -> bool:
        """Tell whether a Bearer value is a static token or, with `api.oidc`, an ID token."""
        if self.token_ok(given):
            return True
        return self.oidc is not None and given.count(".") == 2 and await self.oidc.accepts(given)

    def needs_token(self, path: str) -> bool:
        """Tell whether a route needs a token: every one but health and readiness, with tokens."""
        return self.authenticates and path not in OPEN_PATHS

    def any_body_type(self, authenticated: bool) -> bool:
        """Tell whether `POST /` may take any Content-Type (its caller is authenticated)."""
        return authenticated or self.allow_unauthenticated


__all__ = [
    "JSON_TYPE",
    "OPEN_PATHS",
    "TOKEN_COOKIE",
    "AccessPolicy",
    "is_wildcard",
    "split_host",
]
