"""Registry settings every face shares: credentials, TLS and per-host limits.

`CredentialsConfig` says how to log in to a registry (user/password, a token, a helper or
docker's config files), `Tls` how to reach it, `Registry` adds the per-host limits.
`Bucket` is the same for a bucket holding the registry layout (endpoint, region, key pair,
key prefix). `connection` turns them into client options, a keychain and bucket settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .durations import parse_interval
from .secrets import SecretField, SettingsModel, coerce_secret


class CredentialsConfig(SettingsModel):
    """How to log in to a registry: user/password, a token, a helper or docker's config."""

    username: str | None = None
    password: SecretField = None
    token: SecretField = None
    helper: str | None = None
    docker_config: bool | Path = False
    #: A cloud login for this host (auth/providers.py); named here, its failures are
    #: errors (a provider detected from the host name falls back to docker's files).
    provider: Literal["ecr", "gcp", "azure"] | None = None

    coerce_secrets = field_validator("password", "token", mode="before")(coerce_secret)

    @model_validator(mode="after")
    def _one_way(self) -> CredentialsConfig:
        ways = [
            self.username is not None or self.password is not None,
            self.token is not None,
            self.helper is not None,
            self.docker_config is not False,
            self.provider is not None,
        ]
        if sum(ways) > 1:
            raise ValueError(
                "give one of username/password, token, helper, docker_config or provider,"
                " not several"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class Tls(SettingsModel):
    """TLS settings for one registry."""

    verify: bool = True
    ca_file: Path | None = None
    plain_http: bool | None = None  # None: plain HTTP for loopback hosts only


class Registry(SettingsModel):
    """Settings for one registry host."""

    credentials: CredentialsConfig | None = None
    #: Another URL serving this host (a VPC endpoint, a private link, a local mirror):
    #: connections go there; names, credentials and provider detection keep the host.
    endpoint: str | None = None
    tls: Tls = Tls()
    max_concurrency: int = Field(default=32, ge=1, le=512)
    requests_per_second: float | None = Field(default=None, gt=0)
    rate_limit_reserve: int | None = Field(default=None, ge=0)
    rate_limit_wait: str | int = "5m"
    #: ECR only: a push to a repository that does not exist creates it (CreateRepository)
    #: with these settings. Never done for other registries.
    create_repositories: bool = False
    tag_mutability: Literal["MUTABLE", "IMMUTABLE"] = "MUTABLE"
    scan_on_push: bool = False
    encryption: Literal["AES256", "KMS"] = "AES256"
    kms_key: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            from ..client import endpoint_base
            from ..errors import ConfigError

            try:
                endpoint_base(v)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return v

    #: Back off on 429/503 and recover (AIMD) below the limits above.
    adaptive: bool = True
    min_concurrency: int = Field(default=1, ge=1, le=512)
    min_requests_per_second: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _floors(self) -> Registry:
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(
                f"min_concurrency ({self.min_concurrency}) is above max_concurrency"
                f" ({self.max_concurrency})"
            )
        return self

    @field_validator("rate_limit_wait")
    @classmethod
    def _wait(cls, v: str | int) -> str | int:
        if parse_interval(v).total_seconds() <= 0:
            raise ValueError("rate_limit_wait must be longer than 0")
        return v

    def rate_limit_wait_seconds(self) -> float:
        """`rate_limit_wait` in seconds."""
        return parse_interval(self.rate_limit_wait).total_seconds()


class Bucket(SettingsModel):
    """Settings for one bucket holding the registry layout (keyed `s3://BUCKET`,
    `r2://ACCOUNT/BUCKET`, `s3:REGION:BUCKET`, `gs://BUCKET`, `az://ACCOUNT/CONTAINER`).
    What is left out comes from the cloud's environment (AWS_*, GOOGLE_*, AZURE_*)."""

    endpoint: str | None = None
    region: str | None = None
    #: username: the access key id; password: the secret access key (or Azure's account key).
    credentials: CredentialsConfig | None = None
    #: A key prefix the layout lives under (`mirror` gives `mirror/v2/...`).
    prefix: str = ""
    #: Allow a plain-HTTP endpoint that is not on loopback (loopback ones always are).
    allow_http: bool = False
    #: Write every object with a public-read ACL (S3 buckets only: R2, GCS and Azure make
    #: a bucket or container public as a whole; needs the `aws` extra).
    public_read: bool = False
    #: S3 and R2: send each upload's SHA-256 for the store to check (off only for an
    #: S3-compatible store that refuses `x-amz-checksum-sha256`).
    checksum: bool = True

    @model_validator(mode="after")
    def _keys_only(self) -> Bucket:
        c = self.credentials
        if c is not None and (c.username is None or c.token or c.helper or c.docker_config):
            raise ValueError("a bucket's credentials are username (key id) and password (secret)")
        return self
