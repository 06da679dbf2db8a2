"""The referrers answer the proxy gives, whatever it was made from; no I/O here.

A referrers answer (`GET /v2/NAME/referrers/DIGEST`) is an OCI image index listing the
descriptors of the manifests whose `subject` is DIGEST. The proxy builds it from the
upstream's referrers API (its pages merged), from the upstream's fallback tag
`sha256-<hex>` (an image index, for registries without the API), or from a bucket's
fallback index object; the subject itself is never listed (a registry resolving
`sha256-<hex>` to the image is ignored), and an `artifactType` asked for is applied here,
so `OCI-Filters-Applied: artifactType` is always true when it is sent.

`ApiAbsence` remembers, per upstream and for a bounded time, that an upstream has no
referrers API, so it is not asked again for each subject.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import digest as digests
from .. import mediatypes as mt
from .replies import API_VERSION

#: Seconds an upstream's missing referrers API is remembered before it is asked again.
NO_API_TTL = 900.0
#: The cache's name for a subject's referrers answer: never a valid tag (`~`), so no
#: client's tag can name it.
CACHE_KEY_PREFIX = "referrers~"
#: The warning of a stale answer (RFC 7234), as for manifests.
STALE_WARNING = '110 - "Response is Stale"'


class ApiAbsence:
    """Which upstreams answered that they have no referrers API, each for `ttl` seconds."""

    def __init__(
        self, ttl: float = NO_API_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Remember absences for `ttl` seconds of `clock`."""
        self.ttl = ttl
        self._clock = clock
        self._until: dict[str, float] = {}

    def missing(self, upstream: str) -> bool:
        """Tell whether `upstream` is known to lack the API (within the TTL)."""
        until = self._until.get(upstream)
        if until is None:
            return False
        if self._clock() >= until:
            del self._until[upstream]
            return False
        return True

    def note(self, upstream: str) -> None:
        """Record that `upstream` has no referrers API, as of now."""
        self._until[upstream] = self._clock() + self.ttl


def cache_key(subject: str) -> str:
    """The cache's tag-like name of the referrers answer of `subject`."""
    return f"{CACHE_KEY_PREFIX}{digests.algorithm(subject)}-{digests.encoded(subject)}"


def fallback_tag(subject: str) -> str:
    """The fallback tag listing the referrers of `subject` (`sha256-<hex>`)."""
    return f"{digests.algorithm(subject)}-{digests.encoded(subject)}"


def index_entries(raw: bytes) -> list[dict[str, Any]] | None:
    """The descriptors of an image index's `manifests` (entries that are no descriptor
    with a valid digest are left out); None when `raw` is no JSON object with a
    `manifests` list."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        return None
    return [
        e
        for e in doc["manifests"]
        if isinstance(e, dict)
        and isinstance(e.get("digest"), str)
        and digests.is_valid(e["digest"])
    ]


def fallback_entries(raw: bytes, media_type: str, subject: str) -> list[dict[str, Any]]:
    """The referrers a fallback tag's manifest lists: none when it is the subject itself
    (a registry resolving `sha256-<hex>` to the image) or no image index."""
    if digests.of(raw, digests.algorithm(subject)) == subject:
        return []
    if not mt.is_index(media_type.split(";")[0].strip()):
        return []
    return index_entries(raw) or []


def selected(
    entries: list[dict[str, Any]], subject: str, artifact_type: str | None
) -> list[dict[str, Any]]:
    """The entries to list: never the subject, each once, of `artifact_type` when given."""
    out: list[dict[str, Any]] = []
    seen = {subject}
    for e in entries:
        if e["digest"] in seen:
            continue
        if artifact_type is not None and e.get("artifactType") != artifact_type:
            continue
        seen.add(e["digest"])
        out.append(e)
    return out


def index_bytes(entries: list[dict[str, Any]]) -> bytes:
    """An image index listing `entries`, as the referrers API answers."""
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    return json.dumps(doc, separators=(",", ":")).encode()


def referrers_answer(
    entries: list[dict[str, Any]],
    subject: str,
    artifact_type: str | None,
    *,
    stale: bool = False,
) -> web.Response:
    """Answer a referrers request with `entries` (filtered by `artifact_type` here)."""
    headers = {**API_VERSION, "Content-Type": mt.OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    if stale:
        headers["Warning"] = STALE_WARNING
    return web.Response(
        body=index_bytes(selected(entries, subject, artifact_type)), headers=headers
    )


__all__ = [
    "NO_API_TTL",
    "ApiAbsence",
    "cache_key",
    "fallback_entries",
    "fallback_tag",
    "index_bytes",
    "index_entries",
    "referrers_answer",
    "selected",
]
