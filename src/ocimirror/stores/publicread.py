"""The public-read ACL of a bucket's objects (a bucket entry's `public_read: true`).

Only S3 keeps a per-object ACL that ocimirror can set. obstore has no ACL option, but its
client sends `default_headers`, signed with the rest, so a store opened with
`x-amz-acl: public-read` writes each object public in the same request: PutObject and
CopyObject take the header, and an object replaced whole (a tag moved) is never private
for a moment. A multipart upload cannot: S3 refuses `x-amz-acl` on UploadPart, which the
header would ride along with, so a blob above one part is uploaded plainly and then made
public with PutObjectAcl through boto3 (the `aws` extra), before any manifest names it.

R2 has no object ACLs (public access is a bucket setting), GCS buckets use uniform
bucket-level access by default and Azure sets public access per container:
`refusal(transport)` says so, and the config refuses `public_read` there.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import AuthError, ConfigError, NotFound, StoreError
from ..extras import require

#: The header that makes S3 write an object public-read.
ACL_HEADER = {"x-amz-acl": "public-read"}

#: The S3 error code of a bucket that allows no ACLs.
NO_ACLS = "AccessControlListNotSupported"

#: What ocimirror says when a bucket refuses ACLs.
NO_ACLS_MESSAGE = (
    "the bucket does not allow ACLs (its Object Ownership is 'bucket owner enforced',"
    " the default for new S3 buckets): allow ACLs on the bucket, or drop public_read and"
    " make the bucket public with a bucket policy"
)

_REFUSALS = {
    "r2": (
        "R2 has no object ACLs: make the bucket public in R2's settings instead"
        " (Settings > Public access: a custom domain, or the r2.dev subdomain)"
    ),
    "gs": (
        "GCS buckets use uniform bucket-level access: grant allUsers the Storage Object"
        " Viewer role on the bucket instead (public_read is for S3 buckets)"
    ),
    "az": (
        "Azure sets public access per container: set the container's public access level"
        " to Blob instead (public_read is for S3 buckets)"
    ),
    "file": "a directory has no ACLs: the web server serving it decides who reads it",
}


def refusal(transport: str) -> str | None:
    """Say why `public_read` cannot apply to a bucket of this scheme, or None (S3)."""
    return _REFUSALS.get(transport, None if transport == "s3" else "not a bucket")


class PublicRead:
    """Makes objects public-read with PutObjectAcl, through boto3 in a worker thread."""

    def __init__(self, name: str, bucket: str, options: Mapping[str, str]) -> None:
        """Check that boto3 is installed (the `aws` extra); connect on the first call."""
        require("boto3", "aws", f"{name}: public_read")
        self.name = name
        self.bucket = bucket
        self._options = dict(options)
        self._client: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        import boto3
        from botocore.config import Config

        with self._lock:
            if self._client is None:
                o = self._options
                endpoint = o.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL") or None
                region = (
                    o.get("region")
                    or os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION")
                    or "us-east-1"
                )
                config = Config(
                    connect_timeout=5,
                    retries={"mode": "standard", "max_attempts": 4},
                    # obstore's addressing, so both reach the same place.
                    s3={"addressing_style": "path" if endpoint else "auto"},
                )
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=region,
                    aws_access_key_id=o.get("access_key_id") or None,
                    aws_secret_access_key=o.get("secret_access_key") or None,
                    config=config,
                )
            return self._client

    def _grant(self, key: str) -> None:
        from botocore import exceptions as bx

        where = f"{self.name}: make {key} public-read"
        try:
            self._connect().put_object_acl(Bucket=self.bucket, Key=key, ACL="public-read")
        except bx.NoCredentialsError:
            message = f"{where}: no AWS credentials found"
            raise AuthError(message, status=403, public=message) from None
        except bx.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            if code == NO_ACLS:
                raise StoreError(f"{where}: {NO_ACLS_MESSAGE}") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                message = f"{where}: access denied"
                raise AuthError(message, status=403, public=message) from None
            if code == "NoSuchBucket":
                raise NotFound(f"{where}: the bucket does not exist") from None
            raise StoreError(f"{where}: the store answered HTTP {status} {code}".rstrip()) from None
        except bx.BotoCoreError as e:
            raise StoreError(f"{where}: {type(e).__name__} (no answer)") from None

    async def grant(self, key: str) -> None:
        """Make one object public-read (PutObjectAcl)."""
        await asyncio.to_thread(self._grant, key)


def check(transport: str, name: str) -> None:
    """Raise ConfigError when `public_read` cannot apply to this bucket."""
    why = refusal(transport)
    if why is not None:
        raise ConfigError(f"{name}: public_read: {why}")


__all__ = ["ACL_HEADER", "NO_ACLS", "NO_ACLS_MESSAGE", "PublicRead", "check", "refusal"]
