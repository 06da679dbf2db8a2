"""Opening a bucket: its settings, the obstore URL and options, and `open_bucket`.

A reference names a bucket (`s3://BUCKET`, `r2://ACCOUNT/BUCKET`, `gs://BUCKET`,
`az://ACCOUNT/CONTAINER`, `file:///DIR`); the config's `buckets:` entry for it, keyed by
`bucket_key`, adds endpoint, region, keys, a key prefix and the write options. The layout
inside the bucket is `BucketStore`'s (stores/objectstore.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..auth.credentials import Credentials
from ..errors import ConfigError, NotFound, ReferenceError
from ..reference import Reference
from . import publicread
from .objectstore import BucketStore
from .obstores import open_store

#: R2's S3 endpoint for an account (override per bucket, or OCIMIRROR_R2_ENDPOINT).
R2_ENDPOINT = "https://{account}.r2.cloudflarestorage.com"
R2_ENDPOINT_ENV = "OCIMIRROR_R2_ENDPOINT"


@dataclass(frozen=True)
class BucketSettings:
    """What the config says about one bucket (all optional: the environment fills in)."""

    endpoint: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    #: A key prefix the layout lives under (`mirror` gives `mirror/v2/...`).
    prefix: str = ""
    #: Allow a plain-HTTP endpoint that is not on loopback.
    allow_http: bool = False
    #: Write every object with a public-read ACL (S3 only: stores/publicread.py).
    public_read: bool = False
    #: S3 and R2: send each upload's SHA-256 (`x-amz-checksum-sha256`), so the store
    #: refuses bytes damaged on the way instead of keeping them under a digest's key.
    checksum: bool = True


def bucket_key(ref: Reference) -> str:
    """Return the name a bucket's settings are keyed by: `s3://BUCKET`, `r2://ACCOUNT/BUCKET`,
    `az://ACCOUNT/CONTAINER`, `gs://BUCKET`, `file:///DIR` (whatever form `ref` was in)."""
    return f"{ref.transport}://{ref.registry}"


def store_options(
    ref: Reference, settings: BucketSettings, credentials: Credentials | None
) -> tuple[str, dict[str, str]]:
    """Return the obstore URL and options that open the bucket `ref` names."""
    s = settings
    key_id = s.access_key_id or (credentials.username if credentials else "")
    secret = s.secret_access_key or (credentials.password if credentials else "")
    opts: dict[str, str] = {}
    if ref.transport in ("s3", "r2"):
        if ref.transport == "r2":
            account, bucket = ref.registry.split("/", 1)
            endpoint = (
                s.endpoint or os.environ.get(R2_ENDPOINT_ENV) or R2_ENDPOINT.format(account=account)
            )
            region = s.region or "auto"
        else:
            bucket, endpoint, region = ref.registry, s.endpoint, s.region or ref.region
        if endpoint:
            opts["endpoint"] = endpoint
        if region:
            opts["region"] = region
        if key_id:
            opts["access_key_id"] = key_id
            opts["secret_access_key"] = secret
        if s.checksum:
            opts["checksum_algorithm"] = "sha256"
        url = f"s3://{bucket}"
    elif ref.transport == "gs":
        if key_id or secret:
            raise ConfigError(
                f"{ref.place}: GCS takes its credentials from GOOGLE_APPLICATION_CREDENTIALS,"
                " not a username and password"
            )
        if s.endpoint:
            opts["base_url"] = s.endpoint
        url = f"gs://{ref.registry}"
    elif ref.transport == "az":
        account, container = ref.registry.split("/", 1)
        opts["account_name"] = account
        if secret:
            opts["account_key"] = secret
        if s.endpoint:
            opts["endpoint"] = s.endpoint
        url = f"az://{container}"
    elif ref.transport == "file":
        url = f"file://{ref.registry}"
    else:
        raise ReferenceError(f"{ref}: not a bucket reference")
    if s.allow_http:
        opts["allow_http"] = "true"
    return url, opts


def open_bucket(
    ref: Reference,
    settings: BucketSettings | None = None,
    credentials: Credentials | None = None,
    *,
    create: bool = True,
) -> BucketStore:
    """Open the BucketStore for a bucket reference (no request is made until used).

    A missing directory (`file://`) is made by the first write if `create` (a
    destination); else it is NotFound. A bucket is never created: a missing one fails
    its requests.
    """
    s = settings or BucketSettings()
    url, opts = store_options(ref, s, credentials)
    prefix = s.prefix
    if ref.transport == "file" and not os.path.isdir(ref.registry):
        if not create:
            raise NotFound(f"{ref.place}: no such directory")
        # Rooted at the nearest directory that exists, the missing ones a key prefix: they
        # are made by the first write, so a dry run (or a copy that fails before writing)
        # leaves no empty directory behind.
        base, missing = _nearest_directory(ref.registry)
        url = f"file://{base}"
        prefix = "/".join([*missing, s.prefix.strip("/")]).strip("/")
    store = open_store(url, opts, what="bucket", any_http=False)
    local = ref.transport == "file"
    bucket = BucketStore(store, name=ref.place, prefix=prefix, local=local)
    if s.public_read:
        publicread.check(ref.transport, ref.place)
        bucket.public = publicread.PublicRead(ref.place, url.removeprefix("s3://"), opts)
        headers = publicread.ACL_HEADER
        bucket.writer = open_store(url, opts, what="bucket", any_http=False, headers=headers)
    return bucket


def _nearest_directory(path: str) -> tuple[str, list[str]]:
    """Split `path` into its nearest existing directory and the names missing below it."""
    head, missing = os.path.abspath(path), list[str]()
    while not os.path.isdir(head):
        head, name = os.path.split(head)
        missing.insert(0, name)
    return head, missing


__all__ = [
    "R2_ENDPOINT",
    "R2_ENDPOINT_ENV",
    "BucketSettings",
    "bucket_key",
    "open_bucket",
    "store_options",
]
