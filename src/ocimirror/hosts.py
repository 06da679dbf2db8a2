"""Registry hosts: how one is reached (`HostOptions`) and where it is served (endpoints).

A host name is what images are named by; an endpoint (`registries: {HOST: {endpoint:
URL}}`, `--registry-endpoint`, `OCIMIRROR_REGISTRY_ENDPOINTS`) is another URL serving that
host, where requests go while names, credentials and scopes stay the host's. Origins
(`origin`, `shown_origin`) decide where credentials may go: only to the registry's own
scheme, host and port.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import yarl

from .errors import ConfigError
from .netpolicy import AddressPolicy
from .reference import is_loopback_host


@dataclass(frozen=True)
class HostOptions:
    """How to reach one registry host: TLS, plain HTTP, request concurrency and limits."""

    tls_verify: bool = True
    ca_file: str | None = None
    plain_http: bool | None = None  # None: plain HTTP for loopback hosts only
    max_concurrency: int = 32
    #: Request starts per second (token fetches included), bursts of max(1, int(rate)).
    requests_per_second: float | None = None
    #: Hold manifest GETs while the registry's `RateLimit-Remaining` is below this.
    rate_limit_reserve: int | None = None
    #: Seconds to wait before re-checking the remaining count with a HEAD.
    rate_limit_wait: float = 300.0
    #: Where connections may go (serve's API jobs); None: anywhere.
    address_policy: AddressPolicy | None = None
    #: Back off on 429/503 and recover (AIMD), the limits above as ceilings.
    adaptive: bool = True
    #: The floors adaptive limits never go below.
    min_concurrency: int = 1
    min_requests_per_second: float = 1.0
    #: Another URL serving this host (`registries: {HOST: {endpoint: URL}}`): requests
    #: go to its scheme, host and port; names, credentials and scopes stay the host's.
    endpoint: str | None = None
    #: Creates a repository a push found missing (ECR's `create_repositories`); None:
    #: a missing repository is an error, as on every other registry.
    create_repository: Callable[[str], Awaitable[None]] | None = field(default=None, compare=False)


def endpoint_base(endpoint: str) -> str:
    """Return `scheme://host[:port]` of an endpoint URL, refusing anything else there."""
    try:
        u = yarl.URL(endpoint.strip())
    except (TypeError, ValueError):
        u = yarl.URL()
    if u.scheme not in ("http", "https") or not u.host:
        what = f"a {u.scheme}: URL" if u.scheme else "no URL"
        raise ConfigError(
            f"a registry endpoint is an http:// or https:// URL with a host, not {what}"
        )
    if u.user or u.password or u.query_string or u.fragment:
        raise ConfigError("a registry endpoint is scheme://host[:port] only (no user, query)")
    host = f"[{u.host}]" if ":" in u.host else u.host
    return f"{u.scheme}://{host}" + (f":{u.explicit_port}" if u.explicit_port else "")


#: The environment variable naming registry endpoints: `HOST=URL,HOST=URL`.
ENDPOINTS_ENV = "OCIMIRROR_REGISTRY_ENDPOINTS"


def parse_endpoints(items: Iterable[str]) -> dict[str, str]:
    """Parse `HOST=URL` items (each may hold several, comma-separated) into a mapping."""
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            host, sep, url = part.strip().partition("=")
            host = host.strip().lower()
            if not sep or not host or "/" in host or not url.strip():
                raise ConfigError(
                    "a registry endpoint is HOST=URL (e.g. registry.example=http://127.0.0.1:5000),"
                    f" not {part.strip()[:100]!r}"
                )
            endpoint_base(url)
            out[host] = url.strip()
    return out


def environment_endpoints() -> dict[str, str]:
    """The endpoints `OCIMIRROR_REGISTRY_ENDPOINTS` names (a ConfigError when malformed)."""
    try:
        return parse_endpoints([os.environ.get(ENDPOINTS_ENV, "")])
    except ConfigError as e:
        raise ConfigError(f"{ENDPOINTS_ENV}: {e}") from None


def endpoint_for(host: str, options: HostOptions | None = None) -> str | None:
    """Where `host` is served: a flag or the environment, else its config (`options`)."""
    return environment_endpoints().get(host.lower()) or (options.endpoint if options else None)


def base_url(host: str, options: HostOptions) -> str:
    """Return where requests for `host` go: its endpoint, else HTTP(S) by the TLS settings."""
    if options.endpoint:
        return endpoint_base(options.endpoint)
    plain = options.plain_http
    if plain is None:
        plain = is_loopback_host(host)
    return f"{'http' if plain else 'https'}://{host}"


def origin(url: str) -> tuple[str, str, int | None]:
    """Return the (scheme, host, port) a URL points at, default ports filled in.

    Credentials given for one registry go only to requests whose origin is the registry's.
    """
    try:
        u = yarl.URL(url)
        return (u.scheme.lower(), (u.host or "").lower(), u.port)
    except (TypeError, ValueError):
        return ("", "", None)


def shown_origin(url: str) -> str:
    """Return `scheme://host[:port]` of a URL for a message (no path, no query secrets)."""
    scheme, host, port = origin(url)
    if not host:
        return "an invalid URL"
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


def repo_scope(repo: str, actions: str) -> str:
    """Return the token scope string for a repository and actions (`pull`, `pull,push`)."""
    return f"repository:{repo}:{actions}"
