"""The error tree of ocimirror: every failure the engine raises is one of these.

    OcimirrorError
    ├── ReferenceError        a reference string that does not parse
    ├── ConfigError           bad configuration or command-line options
    ├── ManifestError         a manifest we cannot or will not handle
    ├── NotFound              a manifest, blob or repository does not exist
    ├── DigestMismatch        content does not hash to the digest it was asked for
    ├── StoreError            an object store (bucket) refused or failed a request
    └── RegistryError         any other error answered by a registry (status, codes)
        ├── AuthError         401/403, or a credential that cannot be obtained
        ├── UploadRefused     a monolithic upload refused: retry the blob chunked
        └── RateLimited       429, with the Retry-After delay when the registry gave one

`is_retryable` is the one predicate that says which failures deserve another try.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp


class OcimirrorError(Exception):
    """Base of every error raised by ocimirror."""


class ReferenceError(OcimirrorError):
    """Raised for an image reference that does not parse."""


class ConfigError(OcimirrorError):
    """Raised for invalid configuration or options."""


class ManifestError(OcimirrorError):
    """Raised for a manifest that is malformed, too large, or of a type we refuse."""


class NotFound(OcimirrorError):
    """Raised when a manifest, blob, tag or repository does not exist."""


class DigestMismatch(OcimirrorError):
    """Raised when received content does not hash to the expected digest."""

    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class StoreError(OcimirrorError):
    """Raised when an object store (S3, GCS, Azure, R2, a directory) fails a request.

    obstore retries transient failures itself, so this is never retried again; a refused
    credential is an AuthError instead.
    """


class RegistryError(OcimirrorError):
    """Raised for an error response from a registry."""

    def __init__(
        self, message: str, *, status: int = 0, codes: tuple[str, ...] = (), url: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.url = url


class AuthError(RegistryError):
    """Raised on 401/403 or when credentials cannot be obtained."""


class RateLimited(RegistryError):
    """Raised on HTTP 429; `retry_after` is the delay the registry asked for, in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, url: str = "") -> None:
        super().__init__(message, status=429, codes=("TOOMANYREQUESTS",), url=url)
        self.retry_after = retry_after


class UploadRefused(RegistryError):
    """Raised when a registry refuses a monolithic upload; the blob is retried chunked."""


class Unreachable(RegistryError):
    """Raised when a registry cannot be reached (DNS, refused connection, timeout, TLS)."""


def _no_such_name(exc: aiohttp.ClientConnectorDNSError) -> bool:
    """Tell whether the resolver said the name does not exist (not that it failed)."""
    errno = getattr(exc.os_error, "errno", None)
    return errno in {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def is_retryable(exc: BaseException) -> bool:
    """Tell whether a failure is transient: connection errors, timeouts, 5xx and 429."""
    if isinstance(exc, RateLimited):
        return True
    if isinstance(exc, AuthError | aiohttp.ClientConnectorCertificateError):
        return False  # a refused credential or an untrusted certificate will not change
    if isinstance(exc, aiohttp.ClientConnectorDNSError) and _no_such_name(exc):
        return False  # a name that does not exist will not (a resolver timing out may)
    if isinstance(exc, RegistryError):
        return exc.status >= 500 or exc.status == 408
    return isinstance(
        exc,
        aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError
        | asyncio.TimeoutError
        | ConnectionError,
    )
