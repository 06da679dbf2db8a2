"""An upstream that is a bucket holding the registry layout (stores/objectstore.py).

`REGISTRY_HOST=s3://BUCKET[/PREFIX]` (or `r2://ACCOUNT/BUCKET`, `gs://BUCKET`,
`az://ACCOUNT/CONTAINER`, `file:///DIR[//PREFIX]`) names one: the path after the bucket is
a repository prefix, like REPO_PREFIX (the two join). It keeps `Upstream`'s names,
routing and labels, but sends no HTTP request: `bucketserve` answers its clients from the
`BucketStore`. Credentials come from the upstream's `bucket:` settings or the cloud's
environment (AWS_*, GOOGLE_*, AZURE_*), never from clients; the proxy logs in itself
(`mode` is `proxy`), so its own ping and token answers apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..reference import split_bucket
from ..stores.buckets import BucketSettings, open_bucket
from ..stores.objectstore import BucketStore
from .settings import UpstreamConfig
from .upstream import Upstream


def bucket_settings(config: UpstreamConfig, region: str = "") -> BucketSettings:
    """Return the BucketSettings of a bucket upstream's `bucket:` block (empty without)."""
    b = config.bucket
    if b is None:
        return BucketSettings(region=region)
    c = b.credentials
    return BucketSettings(
        endpoint=b.endpoint or "",
        region=b.region or region,
        access_key_id=(c.username or "") if c else "",
        secret_access_key=c.password.reveal() if c and c.password else "",
        prefix=b.prefix,
        allow_http=b.allow_http,
    )


class BucketUpstream(Upstream):
    """A bucket as an upstream: `Upstream`'s names, a `BucketStore` instead of HTTP."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        force_proxy_auth: bool = False,
        allow_private_redirects: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open the bucket (no request is made until a client asks; no redirect is followed)."""
        found = split_bucket(config.host)
        if found is None:  # UpstreamConfig.is_bucket said otherwise: a bug
            raise ValueError(f"{config.host}: not a bucket")
        ref, path = found
        self.config = config
        self._clock = clock
        self.name = config.name
        self.prefix = "/".join(p for p in (path.strip("/"), config.prefix) if p)
        self.is_hub = False
        self.host = ref.place
        self.namespaces = frozenset(n.lower() for n in (config.namespaces or [ref.place]))
        self.mode = "proxy"
        self.static_header = None
        #: The bucket, read through the BucketStore API.
        self.bucket: BucketStore = open_bucket(
            ref, bucket_settings(config, ref.region), create=False
        )
        #: Blob GETs answered with a presigned URL of the object.
        self.redirect = config.redirect

    @property
    def clients(self) -> tuple[()]:
        """No HTTP client: nothing is counted as sent upstream."""
        return ()

    def __repr__(self) -> str:
        """Show name, bucket and prefix (no credentials)."""
        return f"<BucketUpstream {self.name!r} {self.host} prefix={self.prefix!r}>"

    def browser_url(self, path: str) -> str:
        """A bucket has no page to send a browser to."""
        raise ValueError("a bucket upstream has no web page")

    async def refresh_credentials(self) -> None:
        """Nothing to look up: the bucket's credentials are its settings' or the cloud's."""

    async def close(self) -> None:
        """Release the bucket store."""
        await self.bucket.close()


__all__ = ["BucketUpstream", "bucket_settings"]
