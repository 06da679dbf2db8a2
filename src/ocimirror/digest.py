"""Content digests (`sha256:<hex>`) and a hashing stream that verifies as it goes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from .errors import DigestMismatch

_DIGEST_RE = re.compile(r"^(?P<alg>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[a-zA-Z0-9=_-]+)$")
_HEX_LEN = {"sha256": 64, "sha512": 128}


def is_valid(digest: str) -> bool:
    """Tell whether a string is a well-formed digest of a supported algorithm."""
    m = _DIGEST_RE.match(digest)
    if not m:
        return False
    length = _HEX_LEN.get(m["alg"])
    return length is not None and len(m["hex"]) == length and _is_lower_hex(m["hex"])


def _is_lower_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def algorithm(digest: str) -> str:
    """Return the algorithm part of a digest (`sha256`)."""
    return digest.split(":", 1)[0]


def encoded(digest: str) -> str:
    """Return the hex part of a digest."""
    return digest.split(":", 1)[1]


def hasher(digest: str) -> Any:
    """Return a fresh hashlib object for the algorithm of `digest`."""
    alg = algorithm(digest)
    if alg not in _HEX_LEN:
        raise ValueError(f"unsupported digest algorithm {alg!r}")
    return hashlib.new(alg)


def of(data: bytes, alg: str = "sha256") -> str:
    """Return the digest of `data`."""
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def verify(data: bytes, expected: str, what: str = "content") -> None:
    """Raise DigestMismatch unless `data` hashes to `expected`."""
    actual = of(data, algorithm(expected))
    if actual != expected:
        raise DigestMismatch(expected, actual, what)


async def verified(
    chunks: AsyncIterable[bytes], expected: str, size: int | None = None, what: str = "blob"
) -> AsyncIterator[bytes]:
    """Yield `chunks` unchanged, raising DigestMismatch at the end if they do not match.

    The check runs before the last chunk is handed on, so a consumer that uploads the
    stream never finishes an upload of wrong content.
    """
    h = hasher(expected)
    total = 0
    pending: bytes | None = None
    async for chunk in chunks:
        if pending is not None:
            yield pending
        h.update(chunk)
        total += len(chunk)
        if size is not None and total > size:
            raise DigestMismatch(expected, f"<more than {size} bytes>", what)
        pending = chunk
    actual = f"{algorithm(expected)}:{h.hexdigest()}"
    if actual != expected:
        raise DigestMismatch(expected, actual, what)
    if size is not None and total != size:
        raise DigestMismatch(expected, f"{actual} ({total} bytes, expected {size})", what)
    if pending is not None:
        yield pending
