"""AWS ECR: registry logins from the AWS default chain, and repository creation.

`ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]`: `ecr:GetAuthorizationToken` for that
account in that region; `public.ecr.aws`: `ecr-public:GetAuthorizationToken` in
us-east-1. The token is basic auth `AWS:<password>`, good until its `expiresAt` (12 hours
on AWS). Credentials come from boto3's default chain: environment keys, the shared
profile, web identity, the container or instance role. `AWS_ENDPOINT_URL` (and
`AWS_ENDPOINT_URL_ECR`) point the API calls elsewhere, as for every AWS tool.

boto3 (the `aws` extra) runs in a worker thread: its calls are few (one login per
registry per 12 hours, one call per repository created) and aiobotocore would pin
botocore to the versions it supports, against the other extras.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ..errors import AuthError
from .providers import ECR_PUBLIC, Login, ecr_match, failure
from .source import Credentials

TITLE = "AWS ECR"
_NO_EXTRA = "the aws extra is not installed (pip install 'ocimirror[aws]')"
_NO_CREDS = (
    "no AWS credentials found (environment keys, profile, web identity, container or instance role)"
)


@dataclass(frozen=True)
class EcrRegistry:
    """What a host name says: account, region and API flavour."""

    account: str
    region: str
    fips: bool = False
    public: bool = False


def parse_host(host: str) -> EcrRegistry | None:
    """Return the ECR registry `host` names, None when it is not an ECR host."""
    name = host.lower()
    if name == ECR_PUBLIC:
        return EcrRegistry(account="", region="us-east-1", public=True)
    m = ecr_match(name)
    if m is None:
        return None
    return EcrRegistry(m["account"], m["region"], fips=bool(m["fips"]))


@dataclass(frozen=True)
class RepositorySettings:
    """How `CreateRepository` makes a repository a push found missing."""

    tag_mutability: Literal["MUTABLE", "IMMUTABLE"] = "MUTABLE"
    scan_on_push: bool = False
    encryption: Literal["AES256", "KMS"] = "AES256"
    kms_key: str | None = None


class EcrProvider:
    """ECR logins and repositories through boto3 (see the module doc)."""

    title = TITLE

    def __init__(self) -> None:
        """Nothing is imported or called until the first login."""
        self._clients: dict[tuple[str, str, bool], Any] = {}
        self._lock = threading.Lock()

    def _client(self, service: str, reg: EcrRegistry) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise failure(self._host(reg), TITLE, _NO_EXTRA, unavailable=True) from None
        key = (service, reg.region, reg.fips)
        with self._lock:
            if key not in self._clients:
                config = Config(use_fips_endpoint=reg.fips, retries={"mode": "standard"})
                self._clients[key] = boto3.session.Session().client(
                    service, region_name=reg.region, config=config
                )
            return self._clients[key]

    @staticmethod
    def _host(reg: EcrRegistry) -> str:
        if reg.public:
            return ECR_PUBLIC
        return f"{reg.account}.dkr.ecr{'-fips' if reg.fips else ''}.{reg.region}.amazonaws.com"

    def _call(self, host: str, reg: EcrRegistry, service: str, op: str, **params: Any) -> Any:
        """Call one API operation, its failures made into one line naming host and cause."""
        try:
            from botocore import exceptions as bx
        except ImportError:
            raise failure(host, TITLE, _NO_EXTRA, unavailable=True) from None
        client = self._client(service, reg)
        try:
            return getattr(client, op)(**params)
        except bx.NoCredentialsError:
            raise failure(host, TITLE, _NO_CREDS, unavailable=True) from None
        except bx.ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", "error"))
            message = str(err.get("Message", ""))[:300]
            raise failure(host, TITLE, f"{op}: {code}: {message}".rstrip(": ")) from None
        except bx.EndpointConnectionError:
            raise failure(
                host,
                TITLE,
                f"cannot reach the {service} API of region {reg.region} (is the region right?)",
            ) from None
        except bx.BotoCoreError as e:
            raise failure(host, TITLE, f"{op}: {str(e)[:300]}") from None

    # -- logins ---------------------------------------------------------------------------

    async def login(self, host: str) -> Login:
        """Return `AWS:<token>` for the host's registry, with its expiry."""
        reg = parse_host(host)
        if reg is None:
            raise failure(
                host, TITLE, "not an ECR host name (ACCOUNT.dkr.ecr.REGION.amazonaws.com)"
            )
        return await asyncio.to_thread(self._login, host, reg)

    def _login(self, host: str, reg: EcrRegistry) -> Login:
        if reg.public:
            resp = self._call(host, reg, "ecr-public", "get_authorization_token")
            data = resp.get("authorizationData") or {}
        else:
            resp = self._call(
                host, reg, "ecr", "get_authorization_token", registryIds=[reg.account]
            )
            data = (resp.get("authorizationData") or [{}])[0]
        try:
            user, sep, password = (
                base64.b64decode(data["authorizationToken"]).decode().partition(":")
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            user, sep, password = "", "", ""
        if not sep or not password:
            raise failure(host, TITLE, "GetAuthorizationToken returned no usable token")
        expires = data.get("expiresAt")
        expires_at = expires.timestamp() if isinstance(expires, datetime) else None
        return Login(Credentials(username=user, password=password), expires_at)

    async def identity(self, host: str) -> str:
        """Name the caller (`sts:GetCallerIdentity`'s ARN)."""
        reg = parse_host(host) or EcrRegistry("", "us-east-1")
        resp = await asyncio.to_thread(self._call, host, reg, "sts", "get_caller_identity")
        return str(resp.get("Arn", "unknown"))

    # -- repositories ---------------------------------------------------------------------

    async def create_repository(self, host: str, repo: str, settings: RepositorySettings) -> bool:
        """Create `repo` at the host's registry; False when it already existed."""
        reg = _private(host)
        params: dict[str, Any] = {
            "registryId": reg.account,
            "repositoryName": repo,
            "imageTagMutability": settings.tag_mutability,
            "imageScanningConfiguration": {"scanOnPush": settings.scan_on_push},
            "encryptionConfiguration": {"encryptionType": settings.encryption}
            | ({"kmsKey": settings.kms_key} if settings.kms_key else {}),
        }
        try:
            await asyncio.to_thread(self._call, host, reg, "ecr", "create_repository", **params)
        except AuthError as e:
            if "RepositoryAlreadyExistsException" in str(e):
                return False
            raise
        return True

    async def missing_repositories(self, host: str, repos: Iterable[str]) -> list[str]:
        """Return those of `repos` that do not exist at the host's registry (in order)."""
        reg = _private(host)

        def missing() -> list[str]:
            out: list[str] = []
            for repo in dict.fromkeys(repos):
                try:
                    self._call(
                        host,
                        reg,
                        "ecr",
                        "describe_repositories",
                        registryId=reg.account,
                        repositoryNames=[repo],
                    )
                except AuthError as e:
                    if "RepositoryNotFoundException" not in str(e):
                        raise
                    out.append(repo)
            return out

        return await asyncio.to_thread(missing)


def _private(host: str) -> EcrRegistry:
    reg = parse_host(host)
    if reg is None or reg.public:
        raise failure(host, TITLE, "repositories are created in private ECR registries only")
    return reg
