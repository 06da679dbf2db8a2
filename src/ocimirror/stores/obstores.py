"""Opening obstore object stores from URLs: the one place that knows obstore's options.

`open_store("s3://bucket/prefix", {"endpoint": ..., "region": ...})` gives an obstore
`ObjectStore` for S3 (and R2 or any S3-compatible service through `endpoint`), GCS
(`gs://`), Azure (`az://`), a directory (`file://`) or memory (`memory://`). Options are
obstore's configuration keys; what they leave out comes from the cloud's standard
environment (AWS_*, GOOGLE_*, AZURE_*), which obstore reads itself. Used by the proxy's
cache store and by the bucket `Store` (stores/objectstore.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..reference import is_loopback_host

if TYPE_CHECKING:
    from obstore.store import ObjectStore

#: The longest a store request may take (a whole blob streamed to a slow client).
STORE_REQUEST_TIMEOUT = "1h"

_ENDPOINT_KEYS = ("endpoint", "aws_endpoint", "aws_endpoint_url", "endpoint_url", "base_url")

#: The environment naming each cloud's endpoint (obstore reads it too).
_ENDPOINT_ENV = {
    "s3": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
    "gs": ("GOOGLE_BASE_URL",),
    "az": ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"),
}


def brief(error: BaseException) -> str:
    """The first line of an error (obstore's messages go on with a debug dump)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def endpoint_of(options: Mapping[str, str], url: str = "s3://") -> str:
    """Return the endpoint the options (else the cloud's environment) give the store that
    `url` names (S3's when no URL is given), or ''."""
    opts = {k.lower(): v for k, v in options.items()}
    names = _ENDPOINT_ENV.get(url.partition("://")[0], ())
    return next(
        (v for k in _ENDPOINT_KEYS if (v := opts.get(k))),
        next((v for n in names if (v := os.environ.get(n))), ""),
    )


def open_store(
    url: str,
    options: Mapping[str, str] | None = None,
    *,
    what: str = "cache store",
    any_http: bool = True,
    headers: Mapping[str, str] | None = None,
) -> ObjectStore:
    """Open the object store a URL names, with obstore's options (endpoint, region...).

    Credentials come from `options` or obstore's environment (AWS_*, GOOGLE_*, AZURE_*).
    A plain `http://` endpoint is allowed when it is on loopback, when `allow_http` is set
    (option or AWS_ALLOW_HTTP), or, with `any_http` (the proxy cache's historic rule),
    wherever it is. `what` names the store in errors; `headers` go with every request
    (signed with the rest where the store signs headers).
    """
    try:
        from obstore.store import from_url
    except ImportError:
        raise ConfigError(f"a {what} needs obstore (pip install obstore)") from None
    opts = {k.lower(): v for k, v in (options or {}).items()}
    # A store that is down fails a request in seconds, not obstore's 3 minutes of retries;
    # a blob streamed to a slow client may take long (obstore's default limit is 30 s).
    client: dict[str, Any] = {"connect_timeout": "5s", "timeout": STORE_REQUEST_TIMEOUT}
    retry: dict[str, Any] = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
    endpoint = endpoint_of(opts, url)
    allow = opts.pop("allow_http", "") or os.environ.get("AWS_ALLOW_HTTP", "")
    if endpoint.startswith("http://") and (
        any_http or is_loopback_host(urlsplit(endpoint).netloc.rpartition("@")[2])
    ):
        client["allow_http"] = True
    if str(allow).lower() in ("1", "true", "yes"):
        client["allow_http"] = True
    if headers:
        client["default_headers"] = dict(headers)
    kwargs: dict[str, Any] = {}
    if url.startswith("file://"):
        kwargs["mkdir"] = True
    elif not url.startswith("memory://"):
        kwargs.update(client_options=client, retry_config=retry)
        if opts:
            kwargs["config"] = opts
    try:
        return from_url(url, **kwargs)
    except BaseException as e:  # obstore panics (a BaseException) on some bad options
        if isinstance(e, KeyboardInterrupt | SystemExit | asyncio.CancelledError):
            raise
        raise ConfigError(f"{what} {url}: {brief(e)}") from None


__all__ = ["STORE_REQUEST_TIMEOUT", "brief", "endpoint_of", "open_store"]
