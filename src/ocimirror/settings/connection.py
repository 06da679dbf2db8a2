"""Registry settings made into what the engine takes: client options, a keychain, bucket
settings, and the StorePool holding them (`pool_for`).

Sync, the service, the proxy and the CLI all build them here, so a host is reached and
logged in to the same way whichever face asks.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ..auth.credentials import Credentials, Keychain
from ..auth.providers import HELPER_PROVIDERS, ProviderName, ProviderSource
from ..client import (
    ENDPOINTS_ENV,
    HostOptions,
    base_url,
    endpoint_for,
    environment_endpoints,
    parse_endpoints,
)
from ..reference import is_docker_hub, parse_bucket
from ..stores.buckets import BucketSettings, bucket_key
from ..stores.pool import StorePool
from .registries import CredentialsConfig, Registry, Tls

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from .config import Config


def static_credentials(c: CredentialsConfig) -> Credentials | None:
    """Return the credentials a config gives as values (user/password, token), else None."""
    if c.token is not None:
        return Credentials(registry_token=c.token.reveal())
    if c.username is not None and c.password is not None:
        return Credentials(username=c.username, password=c.password.reveal())
    return None


def keychain_from(
    credentials: Mapping[str, CredentialsConfig], *, authfile: str | Path | None = None
) -> Keychain:
    """One keychain from per-host credential settings; other hosts use docker's files.

    `authfile` (`--authfile`) is the one auth file to read instead of docker's; a host's
    `docker_config: PATH` names it too.
    """
    overrides: dict[str, Credentials] = {}
    helpers: dict[str, str] = {}
    providers: dict[str, ProviderName] = {}
    for host, c in credentials.items():
        if c.provider:
            providers[host] = c.provider
        elif c.helper in HELPER_PROVIDERS:
            # docker-sync's `helper: ecr`: the native login, no helper binary.
            providers[host] = HELPER_PROVIDERS[c.helper]
        elif c.helper:
            helpers[host] = c.helper
        elif (static := static_credentials(c)) is not None:
            overrides[host] = static
        elif isinstance(c.docker_config, Path):
            authfile = c.docker_config
    return Keychain(
        config_path=authfile,
        overrides=overrides,
        helpers=helpers,
        cloud_sources=[ProviderSource(providers, endpoint_base=endpoint_base_for)],
    )


def endpoint_base_for(host: str) -> str:
    """Where requests for `host` go, by the endpoint flags and environment."""
    return base_url(host, HostOptions(endpoint=endpoint_for(host)))


def keychain_for(config: Config) -> Keychain:
    """Credentials as the config gives them; hosts it does not name use docker's files."""
    return keychain_from(
        {host: reg.credentials for host, reg in config.registries.items() if reg.credentials}
    )


def tls_options(tls: Tls) -> HostOptions:
    """Connection options for a host from its TLS settings (default limits)."""
    return HostOptions(
        tls_verify=tls.verify,
        ca_file=str(tls.ca_file) if tls.ca_file else None,
        plain_http=tls.plain_http,
    )


def host_options(config: Config, host: str) -> HostOptions:
    """Connection settings for a registry host from the config (defaults otherwise)."""
    reg = config.registries.get(host)
    if reg is None and is_docker_hub(host):
        # The Hub is reached at registry-1.docker.io but configured under any of its names.
        reg = next((r for h, r in config.registries.items() if is_docker_hub(h)), None)
    if reg is None:
        return HostOptions()
    return replace(
        tls_options(reg.tls),
        endpoint=reg.endpoint,
        max_concurrency=reg.max_concurrency,
        requests_per_second=reg.requests_per_second,
        rate_limit_reserve=reg.rate_limit_reserve,
        rate_limit_wait=reg.rate_limit_wait_seconds(),
        create_repository=repository_creation(host, reg),
        adaptive=reg.adaptive,
        min_concurrency=reg.min_concurrency,
        min_requests_per_second=reg.min_requests_per_second,
    )


def repository_creation(host: str, reg: Registry) -> Callable[[str], Awaitable[None]] | None:
    """The hook that creates a missing ECR repository, where the config allows it."""
    if not reg.create_repositories:
        return None
    from ..auth.ecr import EcrProvider, RepositorySettings

    provider = EcrProvider()
    settings = RepositorySettings(
        tag_mutability=reg.tag_mutability,
        scan_on_push=reg.scan_on_push,
        encryption=reg.encryption,
        kms_key=reg.kms_key,
    )

    async def create(repo: str) -> None:
        if await provider.create_repository(host, repo, settings):
            log.info("repository created", host=host, repository=repo)

    return create


def bucket_settings(config: Config) -> dict[str, BucketSettings]:
    """The config's `buckets`, keyed as StorePool looks them up (`s3://BUCKET`...)."""
    out: dict[str, BucketSettings] = {}
    for name, b in config.buckets.items():
        ref = parse_bucket(name)
        c = b.credentials
        out[bucket_key(ref)] = BucketSettings(
            endpoint=b.endpoint or "",
            region=b.region or ref.region,
            access_key_id=(c.username or "") if c else "",
            secret_access_key=c.password.reveal() if c and c.password else "",
            prefix=b.prefix,
            allow_http=b.allow_http,
            public_read=b.public_read,
            checksum=b.checksum,
        )
    return out


def pool_for(config: Config) -> StorePool:
    """A StorePool with the config's registry credentials and bucket settings."""
    return StorePool(keychain=keychain_for(config), settings=bucket_settings(config))


def apply_endpoint_flags(items: Iterable[str] | None) -> None:
    """Make `--registry-endpoint HOST=URL` flags hold for this process, over the environment.

    They go into `OCIMIRROR_REGISTRY_ENDPOINTS`, which every StorePool and proxy upstream
    reads, so a daemon's config reloads and the jobs it starts keep them.
    """
    flags = parse_endpoints(items or ())
    if not flags:
        return
    merged = {**environment_endpoints(), **flags}
    os.environ[ENDPOINTS_ENV] = ",".join(f"{h}={u}" for h, u in merged.items())
