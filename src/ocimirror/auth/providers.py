"""Cloud registry logins, chosen from the host name (or named for a host in the config).

`ProviderSource` is a `CredentialSource` (auth/source.py): for a host that one of the
providers recognises it answers with that cloud's short-lived registry credentials and
their expiry, so the keychain asks again before they run out.

- `ecr` (auth/ecr.py): `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]`, `public.ecr.aws`;
- `gcp` (auth/gcp.py): `*-docker.pkg.dev`, `gcr.io`, `*.gcr.io`;
- `azure` (auth/azure.py): `*.azurecr.io`.

The keychain asks this source after docker's auth files, so credentials a user put there
(`docker login`, `_json_key`) keep working as they did. A provider detected from the host
name that cannot log in at all (its extra is not installed, or the cloud's default chain
holds no credentials) logs one warning naming the host, the provider and the cause, is
not asked again for `UNAVAILABLE_RETRY` seconds (a chain's probes of metadata servers
take seconds off the cloud), and the pull is anonymous (public images on these hosts
need no login). A provider
named in the config (`helper: ecr`, `provider: gcp`) fails instead, and so does any other
failure (access denied, a wrong region, an unreachable cloud API): one line naming the
host, the provider and the cause. Secrets never reach a log or an error.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from ..errors import AuthError
from .source import Credentials, Resolved

log = structlog.get_logger(__name__)

ProviderName = Literal["ecr", "gcp", "azure"]
PROVIDERS: tuple[ProviderName, ...] = ("ecr", "gcp", "azure")
#: Seconds a detected provider that could not log in at all is left alone.
UNAVAILABLE_RETRY = 600.0
#: Helper names (docker-sync's `auth: {helper: NAME}`, docker's credHelpers values) that
#: mean a provider here: no `docker-credential-*` binary is run for them.
HELPER_PROVIDERS: dict[str, ProviderName] = {"ecr": "ecr", "ecr-login": "ecr", "gcr": "gcp"}

_ECR_RE = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr(?P<fips>-fips)?\.(?P<region>[a-z0-9-]+)"
    r"\.amazonaws\.com(?P<cn>\.cn)?"
)
ECR_PUBLIC = "public.ecr.aws"


class ProviderUnavailable(AuthError):
    """No login can be had here: the provider's extra is missing, or no cloud credentials."""


class ProviderFailed(AuthError):
    """The cloud refused or failed the login (access denied, wrong region, unreachable)."""


@dataclass(frozen=True)
class Login:
    """A provider's answer: what to present and until when (the keychain's clock)."""

    credentials: Credentials
    expires_at: float | None


class Provider(Protocol):
    """One cloud's registry login."""

    #: The provider's name in messages ("AWS ECR").
    title: str

    async def login(self, host: str) -> Login:
        """Return registry credentials for `host`; ProviderUnavailable or ProviderFailed."""
        ...

    async def identity(self, host: str) -> str:
        """Name who the cloud's default chain logs in as (no secret), for login-check."""
        ...


def ecr_match(host: str) -> re.Match[str] | None:
    """Match a private ECR host name (account, fips, region, cn groups)."""
    return _ECR_RE.fullmatch(host.lower())


def detect(host: str) -> ProviderName | None:
    """Tell which provider a registry host name belongs to, if any."""
    name = host.lower().split(":", 1)[0]
    if ecr_match(name) or name == ECR_PUBLIC:
        return "ecr"
    if name.endswith("-docker.pkg.dev") or name == "gcr.io" or name.endswith(".gcr.io"):
        return "gcp"
    if name.endswith(".azurecr.io"):
        return "azure"
    return None


#: Each provider's SDK (the module its login imports) and the extra that installs it.
SDKS: dict[ProviderName, tuple[str, str]] = {
    "ecr": ("boto3", "aws"),
    "gcp": ("google.auth", "gcp"),
    "azure": ("azure.identity", "azure"),
}


def missing_extra(host: str, provider: ProviderName | None = None) -> str | None:
    """Say what a host's cloud login lacks: its provider's SDK not installed (one line
    naming the host, the provider and the extra); None without a provider, or when the
    SDK is there. `provider` is the one a config names, else the host name's."""
    name = provider or detect(host)
    if name is None:
        return None
    module, extra = SDKS[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (google, azure) is absent
        found = False
    if found:
        return None
    return (
        f"{host}: {name} login: the {extra} extra is not installed"
        f" (pip install 'ocimirror[{extra}]')"
    )


def make_provider(name: ProviderName, *, endpoint_base: Callable[[str], str]) -> Provider:
    """Create a provider (its SDK is imported when it first logs in).

    `endpoint_base(host)` is where the registry is reached (Azure's token exchange goes
    to the registry itself, through the same endpoint mapping as every request).
    """
    if name == "ecr":
        from .ecr import EcrProvider

        return EcrProvider()
    if name == "gcp":
        from .gcp import GcpProvider

        return GcpProvider()
    from .azure import AzureProvider

    return AzureProvider(endpoint_base=endpoint_base)


def _own_host(host: str) -> str:
    return f"https://{host}"


class ProviderSource:
    """Answers for cloud registry hosts with their provider's login (see the module doc)."""

    def __init__(
        self,
        explicit: Mapping[str, ProviderName] | None = None,
        *,
        detect_hosts: bool = True,
        providers: Mapping[ProviderName, Provider] | None = None,
        endpoint_base: Callable[[str], str] = _own_host,
    ) -> None:
        """`explicit`: a provider named per host (its failures are errors); with
        `detect_hosts` other hosts are matched by name. `providers` replaces the SDK-based
        ones (tests inject stand-ins); `endpoint_base(host)` is where a registry is
        reached (settings/connection.py gives the endpoint mapping's answer)."""
        self.explicit = {h.lower(): p for h, p in (explicit or {}).items()}
        self.detect_hosts = detect_hosts
        self._providers: dict[ProviderName, Provider] = dict(providers or {})
        self._endpoint_base = endpoint_base
        self._warned: set[str] = set()
        self._unavailable_until: dict[ProviderName, float] = {}

    def provider_name(self, host: str) -> ProviderName | None:
        """Return the provider that answers for `host`, if any."""
        host = host.lower()
        if host in self.explicit:
            return self.explicit[host]
        return detect(host) if self.detect_hosts else None

    def provider(self, name: ProviderName) -> Provider:
        """Return the provider called `name`, creating it on first use."""
        if name not in self._providers:
            self._providers[name] = make_provider(name, endpoint_base=self._endpoint_base)
        return self._providers[name]

    async def credentials_for(self, host: str) -> Resolved | None:
        """Return the provider's login for `host`, None when no provider answers."""
        name = self.provider_name(host)
        if name is None:
            return None
        explicit = host.lower() in self.explicit
        if not explicit and time.monotonic() < self._unavailable_until.get(name, 0.0):
            return None
        provider = self.provider(name)
        try:
            login = await provider.login(host)
        except ProviderUnavailable as e:
            if explicit:
                raise
            self._unavailable_until[name] = time.monotonic() + UNAVAILABLE_RETRY
            if host not in self._warned:
                self._warned.add(host)
                log.warning("no cloud login: anonymous", error=str(e))
            return None
        return Resolved(login.credentials, expires_at=login.expires_at, source=provider.title)


def failure(host: str, title: str, cause: str, *, unavailable: bool = False) -> AuthError:
    """Return the one-line error naming the host, the provider and the cause."""
    cls = ProviderUnavailable if unavailable else ProviderFailed
    return cls(f"{host}: {title}: {cause}", status=401)
