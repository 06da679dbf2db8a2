"""The error tree of ocimirror: every failure the engine raises is one of these.

    OcimirrorError
    ├── ReferenceError        a reference string that does not parse
    ├── ConfigError           bad configuration or command-line options
    ├── ManifestError         a manifest we cannot or will not handle
    ├── NotFound              a manifest, blob or repository does not exist
    ├── DigestMismatch        content does not hash to the digest it was asked for
    ├── StoreError            an object store (bucket) refused or failed a request
    ├── AddressRefused        a registry address that the address policy refuses
    └── RegistryError         any other error answered by a registry (status, codes)
        ├── AuthError         401/403, or a credential that cannot be obtained
        ├── UploadRefused     a monolithic upload refused: retry the blob chunked
        ├── RateLimited       429, with the Retry-After delay when the registry gave one
        └── Unreachable       no answer: DNS, refused connection, timeout, TLS, not HTTP

`is_retryable` is the one predicate that says which failures deserve another try.
`public_message` is what an API may tell its caller of a failure: a registry's status and
error codes with the specification's own words, never what the registry wrote.
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


class CorruptUpload(StoreError):
    """Raised when an object store refuses an upload whose bytes do not match the checksum
    sent with them (S3's `BadDigest`): damaged on the way, worth sending again."""


class AddressRefused(OcimirrorError):
    """Raised for a registry whose address the address policy refuses (see netpolicy)."""


class RegistryError(OcimirrorError):
    """Raised for an error response from a registry.

    `public` is the error as an API may show it to its caller (see `public_message`).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        codes: tuple[str, ...] = (),
        url: str = "",
        public: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.url = url
        self.public = public


class DeleteRefused(RegistryError):
    """Raised when a registry refuses a DELETE with a 4xx: final, whatever its code.

    Distribution answers a DELETE by tag `400 DIGEST_INVALID`, which on an upload means
    damaged bytes (`is_corrupt_transfer`, retried); here nothing was sent, and every retry
    got the same answer (five DELETEs and about 4 s of waits per tag a purge removed).
    """


class AuthError(RegistryError):
    """Raised on 401/403 or when credentials cannot be obtained."""


class RateLimited(RegistryError):
    """Raised on HTTP 429; `retry_after` is the delay the registry asked for, in seconds."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, url: str = "", public: str = ""
    ) -> None:
        super().__init__(message, status=429, codes=("TOOMANYREQUESTS",), url=url, public=public)
        self.retry_after = retry_after


class UploadRefused(RegistryError):
    """Raised when a registry refuses a monolithic upload; the blob is retried chunked."""


class Unreachable(RegistryError):
    """Raised when a registry cannot be reached (DNS, refused connection, timeout, TLS)."""


def _no_such_name(exc: aiohttp.ClientConnectorDNSError) -> bool:
    """Tell whether the resolver said the name does not exist (not that it failed)."""
    errno = getattr(exc.os_error, "errno", None)
    return errno in {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


#: Upload error codes that say the bytes were damaged on the way (a registry refusing a
#: blob that does not hash to its digest): fetching and sending the blob again may work.
CORRUPT_UPLOAD_CODES = frozenset({"DIGEST_INVALID", "BLOB_UPLOAD_INVALID"})


def is_corrupt_transfer(exc: BaseException) -> bool:
    """Tell whether a failure is content damaged in transit: our own digest check of what
    we received, a registry refusing an upload whose bytes do not match its digest, or an
    object store refusing one whose bytes do not match their checksum."""
    if isinstance(exc, DigestMismatch | CorruptUpload):
        return True
    return (
        isinstance(exc, RegistryError)
        and not isinstance(exc, DeleteRefused)
        and exc.status == 400
        and bool(CORRUPT_UPLOAD_CODES & set(exc.codes))
    )


def is_retryable(exc: BaseException) -> bool:
    """Tell whether a failure is transient: connection errors, timeouts, 5xx, 429 and
    content corrupted in transit (`is_corrupt_transfer`).

    Retries are always bounded (stamina's attempts), so a source whose content really does
    not match its digest still fails, with the mismatch as its error, after the last try.
    """
    if isinstance(exc, RateLimited) or is_corrupt_transfer(exc):
        return True
    import aiohttp  # here, not at the top: `status` and `--help` need no HTTP client

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


# -- what an API may tell its caller ---------------------------------------------------

#: The distribution specification's error codes and their messages.
SPEC_MESSAGES = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "BLOB_UPLOAD_INVALID": "blob upload invalid",
    "BLOB_UPLOAD_UNKNOWN": "blob upload unknown to registry",
    "DIGEST_INVALID": "provided digest did not match uploaded content",
    "MANIFEST_BLOB_UNKNOWN": "manifest references a manifest or blob unknown to registry",
    "MANIFEST_INVALID": "manifest invalid",
    "MANIFEST_UNKNOWN": "manifest unknown to registry",
    "NAME_INVALID": "invalid repository name",
    "NAME_UNKNOWN": "repository name not known to registry",
    "SIZE_INVALID": "provided length did not match content length",
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "UNSUPPORTED": "the operation is unsupported",
    "TOOMANYREQUESTS": "too many requests",
}
#: The most of a message of ours an API shows (after `scrub`).
PUBLIC_LENGTH = 120
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def registry_public(what: str, status: int, codes: tuple[str, ...]) -> str:
    """A registry's error answer for an API: what was asked, the status and the codes.

    Codes that look like codes are kept, with the specification's message when it has
    one; the registry's own messages and details are left out.
    """
    parts = []
    for code in dict.fromkeys(codes):
        if _CODE.fullmatch(code):
            known = SPEC_MESSAGES.get(code)
            parts.append(f"{code} ({known})" if known else code)
    return f"{what}: HTTP {status}" + (f" {', '.join(parts)}" if parts else "")


def scrub(text: str, limit: int = PUBLIC_LENGTH) -> str:
    """One short printable line of `text`, without URLs and quoted values."""
    text = _URL.sub("<url>", text)
    text = _QUOTED.sub("'…'", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def public_message(exc: BaseException) -> str:
    """What an API may tell its caller of a failure, never what a remote service wrote.

    Registry answers give their status and codes (`registry_public`), every failure to get
    an answer reads `registry HOST could not be reached` whatever the cause, our own
    messages are scrubbed (`scrub`), and anything unexpected is an internal error.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # an UploadRefused wraps its cause
        seen.add(id(cause))
        if isinstance(cause, RegistryError) and cause.public:
            return cause.public
        cause = cause.__cause__
    if isinstance(exc, AddressRefused):
        return " ".join(str(exc).split())  # ours, whole: what was refused and how to allow it
    if isinstance(exc, OcimirrorError):
        return scrub(str(exc) or type(exc).__name__)
    import aiohttp

    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.TimeoutError):
        return "a registry could not be reached"
    return "internal error (the server log has the details)"
