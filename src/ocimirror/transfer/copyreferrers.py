"""The referrer half of the Copier: find, copy and index an image's referrers.

`ReferrerCopying` is mixed into `Copier` (transfer/copy.py), whose blob and manifest
machinery it uses: referrer manifests are copied like child manifests (blobs first), and
the tag objects (cosign tags, merged fallback indexes) are written last, after the image's
own tag. Discovery and the options live in transfer/referrers.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import structlog

from ..errors import NotFound
from ..manifest import Descriptor, Manifest
from ..mediatypes import is_index
from .referrers import (
    COSIGN_SUFFIXES,
    MAX_DEPTH,
    ApiMemory,
    Discovery,
    Found,
    ReferrerResult,
    fallback_tag,
    merged_fallback,
)

if TYPE_CHECKING:
    from .copy import CopyOptions, Endpoint, ImageResult

log = structlog.get_logger(__name__)


@dataclass
class _TagWrite:
    """A tag object written after everything it names: a cosign tag or a fallback index."""

    tag: str
    manifest: Manifest | None = None
    subject: str = ""
    additions: list[Descriptor] = field(default_factory=list)


class ReferrerCopying:
    """Referrer copying for `Copier`; the attributes below are the Copier's."""

    options: CopyOptions
    discovery: Discovery
    _dst_api: ApiMemory
    _index_locks: dict[tuple[str, str, str], asyncio.Lock]

    def _known_absent(self, dst: Endpoint) -> bool:
        raise NotImplementedError

    def _is_new(self, dst: Endpoint) -> bool:
        raise NotImplementedError

    def _wrote_tag(self, dst: Endpoint, tag: str) -> None:
        raise NotImplementedError

    async def _ensure_manifest(
        self, src: Endpoint, dst: Endpoint, desc: Descriptor, result: ImageResult, level: int
    ) -> None:
        raise NotImplementedError

    async def _copy_blobs(
        self, src: Endpoint, dst: Endpoint, manifest: Manifest, result: ImageResult
    ) -> None:
        raise NotImplementedError

    async def _find_all(
        self, src: Endpoint, top: str | None, children: list[Descriptor]
    ) -> list[tuple[str, Found]]:
        """Find the referrers of an image (digest `top`, unless None) and of each child."""
        if not self.options.referrers.enabled:
            return []
        subjects = ([top] if top is not None else []) + [c.digest for c in children]
        founds = await asyncio.gather(
            *(self.discovery.find(src.store, src.repo, dg) for dg in subjects)
        )
        return list(zip(subjects, founds, strict=True))

    async def _unchanged_referrers(
        self, src: Endpoint, dst: Endpoint, dst_desc: Descriptor, result: ImageResult
    ) -> None:
        """On an unchanged image, look for referrers added since (one look per subject)."""
        if not self.options.referrers.enabled:
            return
        children: list[Descriptor] = []
        if is_index(dst_desc.media_type):
            # The destination holds the same bytes; reading them there spares the source.
            children = (await dst.store.get_manifest(dst.repo, dst_desc.digest)).manifests
        found = await self._find_all(src, dst_desc.digest, children)
        writes = await self._copy_found(src, dst, found, result)
        await self._write_tags(dst, writes)

    async def _copy_found(
        self, src: Endpoint, dst: Endpoint, found: list[tuple[str, Found]], result: ImageResult
    ) -> list[_TagWrite]:
        """Copy the referrer manifests of each subject; return the tag writes left to do."""
        writes = await asyncio.gather(
            *(self._copy_referrers(src, dst, dg, f, result, 0) for dg, f in found)
        )
        return [w for ws in writes for w in ws]

    async def _copy_referrers(
        self,
        src: Endpoint,
        dst: Endpoint,
        subject: str,
        found: Found,
        result: ImageResult,
        depth: int,
    ) -> list[_TagWrite]:
        """Copy the referrers of one subject, and theirs in turn (blobs, then manifests)."""
        opts = self.options.referrers
        writes: list[_TagWrite] = []
        have = await self._dst_referrers(dst, subject) if found.descriptors else set()
        unindexed: list[Descriptor] = []
        nested: list[tuple[str, Found]] = []

        async def one(desc: Descriptor) -> None:
            item = ReferrerResult(subject, desc.digest, desc.artifact_type, found.via, "copied")
            result.referrers.append(item)
            if not opts.wants(desc.artifact_type):
                item.status = "filtered"
                return
            if desc.digest in have:
                item.status = "present"
            elif self.options.dry_run:
                item.status = "found"
            else:
                m = await src.store.get_manifest(src.repo, desc.digest)
                if m.subject is None or m.subject.digest != subject:
                    # A fallback index that lists something else: not copied, not kept.
                    item.status = "filtered"
                    log.warning(
                        "listed referrer has another subject",
                        source=result.source,
                        referrer=desc.digest,
                    )
                    return
                await self._copy_content(src, dst, m, result)
                if not await dst.store.put_referrer(dst.repo, m):
                    listed = desc if desc.artifact_type else m.referrer_descriptor
                    unindexed.append(listed)
                result.manifests_pushed += 1
            if depth + 1 < MAX_DEPTH:
                nested.append(
                    (
                        desc.digest,
                        await self.discovery.find(src.store, src.repo, desc.digest, cosign=False),
                    )
                )

        async def cosign(tag: str, desc: Descriptor) -> None:
            suffix = tag.rsplit(".", 1)[1]
            item = ReferrerResult(
                subject, desc.digest, COSIGN_SUFFIXES[suffix], "cosign", "copied", tag
            )
            result.referrers.append(item)
            if not opts.wants(item.artifact_type):
                item.status = "filtered"
                return
            there = (
                None
                if self._known_absent(replace(dst, ref=tag, display=""))
                else (await dst.store.head_manifest(dst.repo, tag))
            )
            if there is not None and there.digest == desc.digest:
                item.status = "present"
            elif self.options.dry_run:
                item.status = "found"
            else:
                m = await src.store.get_manifest(src.repo, desc.digest)
                await self._copy_content(src, dst, m, result)
                writes.append(_TagWrite(tag, m))

        await asyncio.gather(
            *(one(d) for d in found.descriptors),
            *(cosign(t, d) for t, d in sorted(found.cosign.items())),
        )
        deeper = await asyncio.gather(
            *(self._copy_referrers(src, dst, dg, f, result, depth + 1) for dg, f in nested)
        )
        for ws in deeper:
            writes.extend(ws)
        if unindexed:
            writes.append(_TagWrite(fallback_tag(subject), None, subject, unindexed))
        return writes

    async def _copy_content(
        self, src: Endpoint, dst: Endpoint, m: Manifest, result: ImageResult
    ) -> None:
        """Copy what a manifest names: its blobs, or its child manifests by digest."""
        if m.is_index:
            await asyncio.gather(
                *(self._ensure_manifest(src, dst, c, result, 2) for c in m.manifests)
            )
        else:
            await self._copy_blobs(src, dst, m, result)

    async def _dst_referrers(self, dst: Endpoint, subject: str) -> set[str]:
        """The referrers of `subject` the destination lists already (API or fallback tag)."""
        if self._is_new(dst):
            return set()
        listed = await self._dst_api.ask(dst.store, dst.repo, subject)
        if listed is not None:
            return {d.digest for d in listed}
        if self._known_absent(replace(dst, ref=fallback_tag(subject), display="")):
            return set()  # not in the destination's listing (nor written since)
        index = await self._fallback_index(dst, subject)
        return {d.digest for d in index.manifests} if index is not None else set()

    async def _fallback_index(self, dst: Endpoint, subject: str) -> Manifest | None:
        """The destination's fallback index of `subject`, None when absent (or not one)."""
        try:
            index = await dst.store.get_manifest(dst.repo, fallback_tag(subject))
        except NotFound:
            return None
        if not index.is_index or index.digest == subject:
            return None  # a registry resolving the tag name to the image itself
        return index

    async def _write_tags(self, dst: Endpoint, writes: list[_TagWrite]) -> None:
        """Write the tag objects last: cosign tags, then merged fallback indexes."""
        for w in writes:
            if w.manifest is not None:
                await dst.store.put_manifest(dst.repo, w.tag, w.manifest)
                self._wrote_tag(dst, w.tag)
                continue
            key = (dst.store.name, dst.repo, w.tag)
            async with self._index_locks.setdefault(key, asyncio.Lock()):
                # Read, merge, write: whatever another writer listed there stays.
                existing = await self._fallback_index(dst, w.subject)
                merged = merged_fallback(existing, w.additions)
                if merged is not None:
                    await dst.store.put_manifest(dst.repo, w.tag, merged)
                    self._wrote_tag(dst, w.tag)


__all__ = ["ReferrerCopying"]
