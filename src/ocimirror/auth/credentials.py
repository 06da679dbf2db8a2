"""Find the credentials to present to a registry, the way docker and skopeo do.

A `Keychain` composes `CredentialSource`s (auth/source.py); `resolve(host)` answers with
the first source that has something for the host, in this order for the keychain every
face builds (settings/connection.py):

1. `StaticSource`: values given for the host (a config's `username`/`password` or
   `token`; `--src-creds`, `--src-token` and friends);
2. `HelperSource`: a helper named for the host (a config's `helper: NAME`);
3. `DockerConfigSource`: docker's and podman's auth files, with the `credHelpers` and
   `credsStore` helpers they name (see auth/dockerconfig.py for which files, and how);
4. `ProviderSource`: the cloud registry logins (auth/providers.py: ECR, Artifact
   Registry and GCR, ACR), for hosts they recognise;
5. otherwise anonymous `Credentials()`.

Answers are cached per host until they go stale: an answer with an expiry is asked again
shortly before it (`REFRESH_MARGIN`), a credential helper's after `HELPER_MAX_AGE`
seconds (helpers say nothing of expiry), any answer after `invalidate(host)` (which the
registry client calls when a registry refuses credentials that came from the cache).
Errors are not cached. Secrets never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from .dockerconfig import DockerConfigSource
from .helper import HELPER_MAX_AGE, HELPER_TIMEOUT, HelperSource
from .source import (
    ANONYMOUS,
    DOCKER_HUB_SERVER,
    Credentials,
    CredentialSource,
    Resolved,
    normalize_host,
    parse_user_pass,
    server_url,
)
from .static import StaticSource

log = structlog.get_logger(__name__)

#: Seconds before an announced expiry at which credentials are asked for again.
REFRESH_MARGIN = 60.0


@dataclass(frozen=True)
class _Entry:
    credentials: Credentials
    #: When to ask again, on the keychain's clock; None: only after `invalidate`.
    stale_at: float | None


def _stale_at(answer: Resolved, now: float) -> float | None:
    """Return when a cached answer goes stale: before its expiry, or after its max age."""
    deadlines: list[float] = []
    if answer.expires_at is not None:
        left = answer.expires_at - now
        # Short-lived credentials are renewed halfway through rather than never used.
        deadlines.append(answer.expires_at - min(REFRESH_MARGIN, max(left, 0.0) / 2))
    if answer.max_age is not None:
        deadlines.append(now + answer.max_age)
    return min(deadlines) if deadlines else None


class Keychain:
    """Resolves credentials for a registry host: the first source that answers wins."""

    def __init__(
        self,
        *,
        sources: Sequence[CredentialSource] | None = None,
        config_path: str | Path | None = None,
        overrides: Mapping[str, Credentials] | None = None,
        helpers: Mapping[str, str] | None = None,
        helper_timeout: float = HELPER_TIMEOUT,
        helper_max_age: float = HELPER_MAX_AGE,
        cloud_sources: Sequence[CredentialSource] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Compose `sources`, or else the standard ones (see the module's doc).

        The standard chain: `overrides` (per host), `helpers` (a helper per host), then
        the auth files (`config_path` alone when given; read now, a broken one is a
        ConfigError). `cloud_sources` (auth/providers.py) are asked after these, as
        go-containerregistry asks its cloud keychains after docker's. `clock` tells the
        time expiries are measured in (tests inject one).
        """
        self._docker_config: DockerConfigSource | None = None
        if sources is None:
            self._docker_config = DockerConfigSource(
                config_path, helper_timeout=helper_timeout, helper_max_age=helper_max_age
            )
            sources = [
                StaticSource(overrides or {}),
                HelperSource(helpers or {}, timeout=helper_timeout, max_age=helper_max_age),
                self._docker_config,
            ]
        elif config_path is not None or overrides or helpers:
            raise ValueError("give either sources or the standard sources' settings, not both")
        self.sources: list[CredentialSource] = [*sources, *cloud_sources]
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def paths(self) -> list[Path]:
        """Return the auth files that exist and are consulted, in order."""
        return self._docker_config.paths if self._docker_config else []

    def _fresh(self, key: str) -> Credentials | None:
        entry = self._cache.get(key)
        if entry is None or (entry.stale_at is not None and self._clock() >= entry.stale_at):
            return None
        return entry.credentials

    async def resolve(self, host: str) -> Credentials:
        """Return the credentials for `host` (a name or URL), anonymous when none."""
        key = normalize_host(host)
        if (creds := self._fresh(key)) is not None:
            return creds
        # One lookup per host at a time: concurrent callers wait and share its answer.
        async with self._locks.setdefault(key, asyncio.Lock()):
            if (creds := self._fresh(key)) is not None:
                return creds
            answer = await self._lookup(key)
            self._cache[key] = _Entry(answer.credentials, _stale_at(answer, self._clock()))
            return answer.credentials

    def invalidate(self, host: str, *, stale: Credentials | None = None) -> None:
        """Forget the cached answer for `host` so that the next `resolve` asks again.

        With `stale`, only if the cache still holds those credentials: callers that saw
        the same refusal at once then ask the sources once, not once each.
        """
        key = normalize_host(host)
        entry = self._cache.get(key)
        if entry is not None and (stale is None or entry.credentials == stale):
            del self._cache[key]

    async def _lookup(self, host: str) -> Resolved:
        for source in self.sources:
            answer = await source.credentials_for(host)
            if answer is not None:
                log.debug("credentials resolved", host=host, source=answer.source)
                return answer
        log.debug("no credentials: anonymous", host=host)
        return Resolved(ANONYMOUS)


__all__ = [
    "ANONYMOUS",
    "DOCKER_HUB_SERVER",
    "HELPER_MAX_AGE",
    "HELPER_TIMEOUT",
    "CredentialSource",
    "Credentials",
    "DockerConfigSource",
    "HelperSource",
    "Keychain",
    "Resolved",
    "StaticSource",
    "normalize_host",
    "parse_user_pass",
    "server_url",
]
