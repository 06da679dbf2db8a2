"""What a credential source answers, and the protocol every source implements.

A `CredentialSource` answers for one registry host with `Resolved` credentials (and, when
they have one, when they expire and how long they may be trusted), or None when it has
nothing for that host, so that the keychain asks the next source. Sources live one per
module beside this one: `static` (config values, command-line flags), `dockerconfig`
(docker's and podman's auth files) and `helper` (`docker-credential-NAME`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import ConfigError
from ..reference import DOCKER_HUB, is_docker_hub

#: The server URL docker stores Docker Hub credentials under (and gives to helpers).
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"


@dataclass(frozen=True, repr=False)
class Credentials:
    """What to present to a registry."""

    username: str = ""
    #: A password, or a password-like token, for basic auth and the token GET.
    password: str = ""
    #: A refresh token (docker's `identitytoken`) for the OAuth2 POST form.
    identity_token: str = ""
    #: A bearer token sent as it is (docker's `registrytoken`, or `--src-token`).
    registry_token: str = ""

    @property
    def anonymous(self) -> bool:
        """Tell whether there is nothing at all to present."""
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def __repr__(self) -> str:
        """Show the username and which secrets are set, never their values."""
        parts = [f"username={self.username!r}"] if self.username else []
        parts += [
            f"{name}=***"
            for name in ("password", "identity_token", "registry_token")
            if getattr(self, name)
        ]
        return f"Credentials({', '.join(parts)})"


ANONYMOUS = Credentials()


def parse_user_pass(text: str) -> Credentials:
    """Parse `USER:PASSWORD` (as given to --src-creds / --dest-creds) at its first colon."""
    if not text:
        raise ConfigError("empty credentials: expected USER:PASSWORD")
    username, sep, password = text.partition(":")
    if not sep:
        # The value may be a password given alone: never echo it.
        raise ConfigError("credentials must be USER:PASSWORD, but the value given has no ':'")
    if not username:
        raise ConfigError("credentials must be USER:PASSWORD, but the user name is empty")
    return Credentials(username=username, password=password)


def normalize_host(server: str) -> str:
    """Reduce a registry name or URL to the `host[:port]` credentials are kept under."""
    rest = server.strip()
    for scheme in ("https://", "http://"):
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme) :]
            break
    host = rest.split("/", 1)[0].lower()
    return DOCKER_HUB if is_docker_hub(host) else host


def server_url(host: str) -> str:
    """Return the server URL docker gives credential helpers for `host`."""
    host = normalize_host(host)
    return DOCKER_HUB_SERVER if host == DOCKER_HUB else host


@dataclass(frozen=True)
class Resolved:
    """A source's answer for one host: the credentials and how long they hold."""

    credentials: Credentials
    #: When the credentials stop working, in seconds of the keychain's clock (wall time,
    #: `time.time()`, unless a test injects another); None when the source does not know.
    expires_at: float | None = None
    #: Seconds the answer may be reused before the source is asked again (a credential
    #: helper's answer, which carries no expiry); None: until expiry or a refusal.
    max_age: float | None = None
    #: Where the answer came from, for logs (never a secret).
    source: str = ""


class CredentialSource(Protocol):
    """Resolves a registry host to credentials, or None to let the next source answer."""

    async def credentials_for(self, host: str) -> Resolved | None:
        """Return the credentials for `host` (normalised: `host[:port]`), or None."""
        ...
