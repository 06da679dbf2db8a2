"""Referrers: the signatures, SBOMs and attestations that travel with an image.

Three ways a registry may hold them, all read here:

* the OCI 1.1 referrers API, `GET /v2/<name>/referrers/<digest>` (`Store.referrers`);
* the fallback tag schema of the distribution spec: an image index tagged `sha256-<hex>`
  listing the referrers of `sha256:<hex>`, for registries without the API;
* cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom`, found by HEAD of those names.

`ReferrerOptions` is the one object every face (CLI flags, the sync config, the API's
request models) translates into; `Discovery` finds the referrers of a subject at a source
and remembers, for the run, which stores have no API. The copier (transfer/copy.py) does
the copying; `merged_fallback` builds the index written at a destination without the API.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from .. import digest as digests
from .. import mediatypes as mt
from ..errors import ManifestError, NotFound
from ..manifest import Descriptor, Manifest, parse
from ..store import Store
from .referreroptions import (
    COSIGN_SUFFIXES,
    NO_REFERRERS,
    SIGNATURE_TYPES,
    ReferrerOptions,
    is_referrer_tag,
)

log = structlog.get_logger(__name__)

#: How deep referrers of referrers are followed (an image's signature's signature...).
MAX_DEPTH = 4

Via = Literal["api", "tag", "cosign"]


def fallback_tag(digest: str) -> str:
    """The tag of the fallback index listing the referrers of `digest` (`sha256-<hex>`)."""
    return f"{digests.algorithm(digest)}-{digests.encoded(digest)}"


def cosign_tag(digest: str, suffix: str) -> str:
    """cosign's tag for a signature/attestation/SBOM of `digest` (`sha256-<hex>.sig`)."""
    return f"{fallback_tag(digest)}.{suffix}"


def descriptor_json(desc: Descriptor) -> dict[str, Any]:
    """A referrer's descriptor as an index entry: artifactType and annotations kept."""
    out: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if desc.artifact_type:
        out["artifactType"] = desc.artifact_type
    if desc.annotations:
        out["annotations"] = dict(desc.annotations)
    return out


def merged_fallback(existing: Manifest | None, additions: list[Descriptor]) -> Manifest | None:
    """The fallback index with `additions` merged in, or None when nothing is new.

    Every entry already there stays, whoever wrote it, with its JSON untouched.
    """
    entries: list[Any] = []
    data: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX}
    if existing is not None and existing.is_index:
        data = dict(existing.data)
        entries = list(existing.data.get("manifests") or [])
    have = {e.get("digest") for e in entries if isinstance(e, dict)}
    new = [descriptor_json(d) for d in additions if d.digest not in have]
    if not new:
        return None
    seen: set[str] = set()
    unique = []
    for entry in new:
        if entry["digest"] not in seen:
            seen.add(entry["digest"])
            unique.append(entry)
    data["manifests"] = entries + unique
    return parse(json.dumps(data, indent=2).encode(), mt.OCI_INDEX)


@dataclass
class Found:
    """The referrers of one subject at a source."""

    #: Referrer manifests by descriptor, from the API or the fallback index.
    descriptors: list[Descriptor] = field(default_factory=list)
    #: How `descriptors` were found.
    via: Via = "api"
    #: cosign tags that exist: tag → the manifest it names.
    cosign: dict[str, Descriptor] = field(default_factory=dict)

    @property
    def signed(self) -> bool:
        """Tell whether a signature is among them (before any filter)."""
        if any(tag.endswith(".sig") for tag in self.cosign):
            return True
        return any(d.artifact_type in SIGNATURE_TYPES for d in self.descriptors)


@dataclass
class ReferrerResult:
    """One referrer of an image (or of one of its children, or of another referrer)."""

    subject: str
    digest: str
    artifact_type: str
    #: How the source listed it: the referrers API, the fallback tag or a cosign tag.
    via: str
    #: `copied`, `present` (already at the destination), `filtered` (an option said no)
    #: or `found` (a dry run).
    status: str
    #: The cosign tag naming it, if any.
    tag: str = ""

    def to_json(self) -> dict[str, str]:
        """Return the JSON form of the report."""
        out = {
            "subject": self.subject,
            "digest": self.digest,
            "artifact_type": self.artifact_type,
            "via": self.via,
            "status": self.status,
        }
        if self.tag:
            out["tag"] = self.tag
        return out


class ApiMemory:
    """Which stores have a referrers API, learnt once per store for the run.

    While a store's answer is unknown, one caller asks and the others wait for it, so a
    registry without the API sees exactly one referrers request per run.
    """

    def __init__(self) -> None:
        self._has: dict[str, bool] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ask(
        self, store: Store, repo: str, subject: str, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """The store's referrers API answer, or None (no API: read the fallback tag)."""
        if self._has.get(store.name) is False:
            return None
        if store.name in self._has:
            return await store.referrers(repo, subject, artifact_type)
        async with self._locks.setdefault(store.name, asyncio.Lock()):
            if store.name in self._has:
                return await self.ask(store, repo, subject, artifact_type)
            answer = await store.referrers(repo, subject, artifact_type)
            self._has[store.name] = answer is not None
            if answer is None:
                log.debug("no referrers API, using fallback tags", store=store.name)
            return answer


class Discovery:
    """Finds referrers at sources; remembers for the run which stores lack the API."""

    def __init__(self, options: ReferrerOptions) -> None:
        self.options = options
        self.api = ApiMemory()
        # Lookups done or in flight: an image copied to several targets is looked at once.
        self._found: dict[tuple[str, str, str, bool], asyncio.Future[Found]] = {}
        # Tag lists of source repositories a caller already read (a sync plan's listing).
        self._tags: dict[tuple[str, str], frozenset[str]] = {}

    def note_tags(self, store: Store, repo: str, tags: frozenset[str]) -> None:
        """Record a source repository's tags, listed this run: a fallback or cosign tag
        missing from them is not asked for (no HEAD), one listed costs one request."""
        self._tags[(store.name, repo)] = tags

    def _unlisted(self, store: Store, repo: str, tag: str) -> bool:
        """Tell whether the run's listing of `repo` shows `tag` absent (False: unknown)."""
        tags = self._tags.get((store.name, repo))
        return tags is not None and tag not in tags

    async def find(self, store: Store, repo: str, subject: str, *, cosign: bool = True) -> Found:
        """Every referrer of `subject` in `repo`: the API or the fallback tag, plus cosign's
        tags when `cosign` (asked for images and index children, not for referrers).

        Asked once per run; a lookup that failed is asked again by the next caller.
        """
        key = (store.name, repo, subject, cosign)
        task = self._found.get(key)
        if task is None:
            task = asyncio.ensure_future(self._find(store, repo, subject, cosign))
            self._found[key] = task
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and (task.cancelled() or task.exception() is not None):
                self._found.pop(key, None)
            raise

    def cancel(self) -> None:
        """Cancel the lookups still running (an aborted pass)."""
        for task in self._found.values():
            if not task.done():
                task.cancel()

    async def _find(self, store: Store, repo: str, subject: str, cosign: bool) -> Found:
        found = Found()
        listed = await self.api.ask(store, repo, subject, self.options.server_filter)
        if listed is None:
            found.via = "tag"
            listed = await self._fallback(store, repo, subject)
        found.descriptors = [d for d in listed if d.digest != subject]
        for suffix in COSIGN_SUFFIXES if cosign else ():
            tag = cosign_tag(subject, suffix)
            if self._unlisted(store, repo, tag):
                continue
            desc = await store.head_manifest(repo, tag)
            if desc is not None and desc.digest != subject:
                found.cosign[tag] = desc
        return found

    async def _fallback(self, store: Store, repo: str, subject: str) -> list[Descriptor]:
        """The fallback index's entries; guarded against a tag that resolves to the image.

        Without a listing: a HEAD, then a GET when it names an index. With the run's
        listing: nothing when the tag is not listed, else one GET of the tag.
        """
        tag = fallback_tag(subject)
        listed = (store.name, repo) in self._tags
        if listed and tag not in self._tags[(store.name, repo)]:
            return []
        try:
            if listed:
                index = await store.get_manifest(repo, tag)
            else:
                head = await store.head_manifest(repo, tag)
                if head is None or head.digest == subject or not mt.is_index(head.media_type):
                    return []  # absent, the image itself (a registry resolving it), no index
                index = await store.get_manifest(repo, head.digest)
        except NotFound:
            return []  # deleted since the listing
        except ManifestError as e:
            log.warning("fallback tag ignored", store=store.name, tag=tag, error=str(e))
            return []
        if index.digest == subject or not index.is_index:
            return []  # the image itself, or not an index
        return [d for d in index.manifests if d.digest != subject]


__all__ = [
    "COSIGN_SUFFIXES",
    "NO_REFERRERS",
    "SIGNATURE_TYPES",
    "ApiMemory",
    "Discovery",
    "Found",
    "ReferrerOptions",
    "ReferrerResult",
    "cosign_tag",
    "descriptor_json",
    "fallback_tag",
    "is_referrer_tag",
    "merged_fallback",
]
