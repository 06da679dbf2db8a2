"""The copy engine: images and indexes from one Store to another, blobs streamed.

Order is what keeps a destination consistent: blobs before the manifest that names them,
child manifests (by digest) before their index, and the tag written last. A copy that
fails part-way therefore never leaves a tag pointing at something incomplete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import stamina
import structlog

from .. import digest as digests
from ..errors import (
    DigestMismatch,
    ManifestError,
    NotFound,
    OcimirrorError,
    RateLimited,
    UploadRefused,
    is_corrupt_transfer,
    is_retryable,
    public_message,
)
from ..manifest import Descriptor, Manifest, filter_index
from ..mediatypes import is_index
from ..store import Store
from .copyreferrers import ReferrerCopying
from .referrers import ApiMemory, Discovery, ReferrerOptions, ReferrerResult

#: How deep indexes may nest: the top one is level 1, an index it names level 2, and so
#: on. Real images nest one level (an index of manifests), rarely two; a hostile source
#: can chain distinct, digest-valid indexes without end, each one more fetch and task.
MAX_INDEX_DEPTH = 8

log = structlog.get_logger(__name__)

Status = Literal["copied", "unchanged", "failed", "skipped", "planned"]
BlobHow = Literal["skipped", "mounted", "copied", "foreign"]


@dataclass(frozen=True)
class CopyOptions:
    """How to copy: platform filter, foreign layers, and whether to re-check everything."""

    platforms: tuple[str, ...] = ()
    include_foreign: bool = False
    force: bool = False  # push even when the destination already has the same digest
    #: Signatures, SBOMs, attestations: found, filtered and copied with each image.
    referrers: ReferrerOptions = field(default_factory=ReferrerOptions)
    #: Find what a copy would do (HEADs, referrer discovery); write nothing.
    dry_run: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One side of a copy: a store, a repository in it and a tag or digest."""

    store: Store
    repo: str
    ref: str
    display: str = ""

    def __str__(self) -> str:
        return self.display or f"{self.store.name}/{self.repo}:{self.ref}"


@dataclass
class ImageResult:
    """What happened to one image copy."""

    source: str
    destination: str
    status: Status = "copied"
    source_digest: str = ""
    destination_digest: str = ""
    media_type: str = ""
    platforms: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    manifests_pushed: int = 0
    seconds: float = 0.0
    error: str = ""
    #: The error as an API may show it to its caller (`errors.public_message`).
    public_error: str = ""
    #: Why a `skipped` image was not copied (`unsigned` under require_signed).
    reason: str = ""
    #: The referrers found at the source, and what became of each.
    referrers: list[ReferrerResult] = field(default_factory=list)

    @property
    def filtered(self) -> bool:
        """Tell whether the destination got new bytes (a platform-filtered index)."""
        return bool(self.destination_digest) and self.destination_digest != self.source_digest


class Progress(Protocol):
    """Receives progress events from the copier (the CLI draws them)."""

    def image_started(self, source: str, destination: str) -> None:
        """Call when an image copy starts."""

    def image_sized(self, destination: str, total: int) -> None:
        """Call when the bytes an image needs are known."""

    def bytes_moved(self, destination: str, n: int) -> None:
        """Call as blob bytes flow."""

    def image_finished(self, result: ImageResult) -> None:
        """Call when an image copy ends, with its result."""


class _NoProgress:
    def image_started(self, source: str, destination: str) -> None:
        pass

    def image_sized(self, destination: str, total: int) -> None:
        pass

    def bytes_moved(self, destination: str, n: int) -> None:
        pass

    def image_finished(self, result: ImageResult) -> None:
        pass


def _retry_hook(exc: Exception) -> bool | float:
    """Decide the retries of one blob transfer (GET → verify → PUT, as a whole).

    A blob damaged on the way, in the download (our digest check) or the upload (the
    registry's DIGEST_INVALID), is fetched and sent again: corruption in transit is
    transient. The attempts are bounded, so a source blob that really does not match its
    digest fails with the mismatch after the last one.
    """
    if is_corrupt_transfer(exc):
        log.info("blob damaged in transit, fetching it again", error=str(exc))
        return True
    if isinstance(exc, UploadRefused):
        return 0.0  # the store switched to chunked uploads: go again at once
    if isinstance(exc, RateLimited) and exc.retry_after:
        # A positive Retry-After is the wait; `Retry-After: 0` in a storm is no reason to
        # go again at once: it backs off (jittered, growing) like an answer without one.
        return min(max(exc.retry_after, 0.0), 60.0)
    return is_retryable(exc)


class Copier(ReferrerCopying):
    """Copies images between stores; one Copier shares blob work across many images."""

    def __init__(
        self,
        *,
        options: CopyOptions | None = None,
        image_concurrency: int = 16,
        blob_concurrency: int = 24,
        progress: Progress | None = None,
        attempts: int = 4,
    ) -> None:
        self.options = options or CopyOptions()
        self.progress: Progress = progress or _NoProgress()
        self.attempts = attempts
        self._images = asyncio.Semaphore(image_concurrency)
        self._blobs = asyncio.Semaphore(blob_concurrency)
        # Blob work in flight or done, per destination (store, repo, digest).
        self._blob_tasks: dict[tuple[str, str, str], asyncio.Task[BlobHow]] = {}
        # Repositories of a destination store known to hold a digest: mount sources.
        self._blob_homes: dict[tuple[str, str], set[str]] = {}
        # The first transfer in flight of each (destination store, digest).
        self._blob_flights: dict[tuple[str, str], asyncio.Future[BlobHow]] = {}
        # Child manifests in flight or done, per destination (store, repo, digest).
        self._manifest_tasks: dict[tuple[str, str, str], asyncio.Future[None]] = {}
        # What a destination repository held when the run began, where it was listed:
        # its tags, or None when the repository did not exist yet.
        self._dst_listing: dict[tuple[str, str], frozenset[str] | None] = {}
        # Tags this run wrote at a destination (its listing predates them).
        self._dst_written: set[tuple[str, str, str]] = set()
        #: Referrer discovery at sources (which stores lack the API, for the run).
        self.discovery = Discovery(self.options.referrers)
        # Which destination stores have a referrers API (else their fallback tags are read).
        self._dst_api = ApiMemory()
        # One writer at a time per destination fallback index (store, repo, tag).
        self._index_locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    def note_destination(self, store: Store, repo: str, tags: frozenset[str] | None) -> None:
        """Record a destination repository's tags (None: it does not exist) before copying.

        A tag known to be absent needs no HEAD before its copy, and a repository that
        does not exist yet holds no blob or child manifest worth asking about.
        """
        self._dst_listing[(store.name, repo)] = tags

    async def list_destination(self, store: Store, repo: str) -> None:
        """List a destination repository's tags once and `note_destination` them; a listing
        that fails is not fatal: the copies HEAD each tag instead (and report what is wrong)."""
        try:
            tags: frozenset[str] | None = frozenset(await store.list_tags(repo))
        except NotFound:
            tags = None
        except OcimirrorError as e:
            log.debug("destination not listed", store=store.name, repository=repo, error=str(e))
            return
        self.note_destination(store, repo, tags)

    def _known_absent(self, dst: Endpoint) -> bool:
        key = (dst.store.name, dst.repo)
        if (dst.store.name, dst.repo, dst.ref) in self._dst_written:
            return False
        if key not in self._dst_listing or digests.is_valid(dst.ref):
            return self._is_new(dst)
        tags = self._dst_listing[key]
        return tags is None or dst.ref not in tags

    def _is_new(self, dst: Endpoint) -> bool:
        key = (dst.store.name, dst.repo)
        return key in self._dst_listing and self._dst_listing[key] is None

    def _wrote_tag(self, dst: Endpoint, tag: str) -> None:
        """Remember a tag written this run: the destination's listing no longer tells."""
        self._dst_written.add((dst.store.name, dst.repo, tag))

    # -- images -----------------------------------------------------------------------

    async def copy(self, src: Endpoint, dst: Endpoint, *, dst_absent: bool = False) -> ImageResult:
        """Copy one image or index; failures are returned in the result, not raised.

        `dst_absent` says the caller already knows the destination lacks the tag (a
        planner's HEAD), so it is not asked again.
        """
        result = ImageResult(source=str(src), destination=str(dst))
        started = time.monotonic()
        async with self._images:
            self.progress.image_started(result.source, result.destination)
            try:
                await self._copy(src, dst, result, dst_absent)
            except (TimeoutError, OcimirrorError, OSError) as e:
                result.status = "failed"
                result.error = str(e) or type(e).__name__
                result.public_error = public_message(e)
                log.debug("image copy failed", source=result.source, error=result.error)
            except Exception as e:
                result.status = "failed"
                result.error = f"{type(e).__name__}: {e}"
                result.public_error = public_message(e)
                log.exception("image copy crashed", source=result.source)
        result.seconds = time.monotonic() - started
        self.progress.image_finished(result)
        return result

    async def _copy(
        self, src: Endpoint, dst: Endpoint, result: ImageResult, dst_absent: bool = False
    ) -> None:
        opts = self.options
        filtering = bool(opts.platforms)
        # HEAD the destination first: when it is absent (a cold copy) we go straight to
        # one GET at the source; when present, a HEAD at the source decides.
        dst_desc = None
        if not opts.force and not dst_absent and not self._known_absent(dst):
            dst_desc = await dst.store.head_manifest(dst.repo, dst.ref)
        src_digest = src.ref if digests.is_valid(src.ref) else ""
        manifest: Manifest | None = None
        if dst_desc is not None:
            if not src_digest:
                src_desc = await src.store.head_manifest(src.repo, src.ref)
                if src_desc is None:
                    raise NotFound(f"{src}: manifest unknown")
                src_digest = src_desc.digest
                result.media_type = src_desc.media_type
                unfilterable = not is_index(src_desc.media_type)
            else:
                unfilterable = False
            if src_digest == dst_desc.digest and (not filtering or unfilterable):
                result.status = "unchanged"
                result.source_digest = result.destination_digest = src_digest
                await self._unchanged_referrers(src, dst, dst_desc, result)
                return
            if filtering:
                manifest = await src.store.get_manifest(src.repo, src_digest)
                if manifest.is_index:
                    filtered = filter_index(manifest, list(opts.platforms))
                    if filtered.digest == dst_desc.digest:
                        result.status = "unchanged"
                        result.source_digest = src_digest
                        result.destination_digest = filtered.digest
                        found = await self._find_all(src, None, filtered.manifests)
                        writes = await self._copy_found(src, dst, found, result)
                        await self._write_tags(dst, writes)
                        return
        if manifest is None:
            manifest = await src.store.get_manifest(src.repo, src_digest or src.ref)
        result.source_digest = manifest.digest
        result.media_type = manifest.media_type
        top = manifest
        children: list[Descriptor] = []
        if manifest.is_index:
            children = manifest.manifests
            if filtering:
                top = filter_index(manifest, list(opts.platforms))
                children = top.manifests
            result.platforms = [str(c.platform) for c in children if c.platform is not None]
        # Referrers are found first: a source that fails to list them fails the image
        # before anything is written, and require_signed decides before any byte moves.
        found = await self._find_all(src, manifest.digest, children)
        if opts.referrers.require_signed and not found[0][1].signed:
            result.status = "skipped"
            result.reason = "unsigned"
            log.info("unsigned image skipped", source=result.source)
            return
        if top is not manifest:
            # A platform-filtered index has new bytes: the source's referrers name another.
            found = found[1:]
        if opts.dry_run:
            result.status = "planned"
            result.destination_digest = top.digest
            await self._copy_found(src, dst, found, result)
            return
        if manifest.is_index:
            await asyncio.gather(
                *(self._ensure_manifest(src, dst, child, result, 2) for child in children)
            )
        else:
            await self._copy_blobs(src, dst, manifest, result)
        writes = await self._copy_found(src, dst, found, result)
        await dst.store.put_manifest(dst.repo, dst.ref, top)
        self._wrote_tag(dst, dst.ref)
        result.manifests_pushed += 1
        result.destination_digest = top.digest
        self._remember_manifest(dst, top.digest)
        await self._write_tags(dst, writes)

    def cancel(self) -> None:
        """Cancel the shared manifest and blob transfers still running (an aborted pass)."""
        pending: list[asyncio.Future[Any]] = [*self._manifest_tasks.values()]
        pending += self._blob_tasks.values()
        for task in pending:
            if not task.done():
                task.cancel()
        self.discovery.cancel()

    async def settle(self) -> None:
        """Cancel the shared transfers still running and wait until they have ended.

        A failed image leaves its siblings' transfers running (they are shielded from
        their waiters); settled before the stores close, none reopens a connection after.
        """
        self.cancel()
        pending: list[asyncio.Future[Any]] = [*self._manifest_tasks.values()]
        pending += self._blob_tasks.values()
        await asyncio.gather(*(t for t in pending if not t.done()), return_exceptions=True)

    def _remember_manifest(self, dst: Endpoint, digest: str) -> None:
        key = (dst.store.name, dst.repo, digest)
        if key not in self._manifest_tasks:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            self._manifest_tasks[key] = done

    async def _ensure_manifest(
        self, src: Endpoint, dst: Endpoint, desc: Descriptor, result: ImageResult, level: int
    ) -> None:
        """Copy a child manifest by digest, once per destination, skipping what is there.

        `level` is its depth under the image's top index (which is level 1)."""
        key = (dst.store.name, dst.repo, desc.digest)
        task = self._manifest_tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(self._copy_child(src, dst, desc, result, level))
            self._manifest_tasks[key] = task
        try:
            await asyncio.shield(task)
        except BaseException:
            if task.done() and (task.cancelled() or task.exception() is not None):
                self._manifest_tasks.pop(key, None)
            raise

    async def _copy_child(
        self, src: Endpoint, dst: Endpoint, desc: Descriptor, result: ImageResult, level: int
    ) -> None:
        if not self._is_new(dst) and await dst.store.head_manifest(dst.repo, desc.digest):
            return
        child = await src.store.get_manifest(src.repo, desc.digest)
        if child.is_index:
            if level > MAX_INDEX_DEPTH:
                raise ManifestError(
                    f"{src}: indexes nested more than {MAX_INDEX_DEPTH} levels deep"
                    f" (index {desc.digest} is level {level}); refused"
                )
            await asyncio.gather(
                *(self._ensure_manifest(src, dst, c, result, level + 1) for c in child.manifests)
            )
        else:
            await self._copy_blobs(src, dst, child, result)
        await dst.store.put_manifest(dst.repo, desc.digest, child)
        result.manifests_pushed += 1

    # -- referrers (the rest is in copyreferrers.py) ----------------------------------

    async def refresh_referrers(
        self, src: Endpoint, dst: Endpoint, digest: str, media_type: str = ""
    ) -> ImageResult:
        """Copy the referrers an unchanged image (`digest`, at both ends) gained since.

        A sync pass calls this for the tags its plan found unchanged; failures are in the
        result, as with `copy`. `media_type`, when the plan's HEAD gave it, spares a HEAD
        of the destination manifest (it tells whether the image is an index).
        """
        result = ImageResult(source=str(src), destination=str(dst), status="unchanged")
        result.source_digest = result.destination_digest = digest
        started = time.monotonic()
        async with self._images:
            try:
                desc: Descriptor | None = (
                    Descriptor(media_type, digest, 0)
                    if media_type
                    else await dst.store.head_manifest(dst.repo, digest)
                )
                if desc is None:
                    raise NotFound(f"{dst}: manifest {digest} unknown")
                await self._unchanged_referrers(src, dst, desc, result)
            except (TimeoutError, OcimirrorError, OSError) as e:
                result.status = "failed"
                result.error = str(e) or type(e).__name__
                result.public_error = public_message(e)
        result.seconds = time.monotonic() - started
        return result

    # -- blobs ------------------------------------------------------------------------

    async def _copy_blobs(
        self, src: Endpoint, dst: Endpoint, manifest: Manifest, result: ImageResult
    ) -> None:
        blobs = manifest.blobs
        wanted = [b for b in blobs if self.options.include_foreign or not b.is_foreign]
        self.progress.image_sized(result.destination, sum(b.size for b in wanted))
        hows = await asyncio.gather(*(self._ensure_blob(src, dst, b, result) for b in wanted))
        for how in hows:
            if how == "copied":
                result.blobs_copied += 1
            elif how == "mounted":
                result.blobs_mounted += 1
            else:
                result.blobs_skipped += 1

    async def _ensure_blob(
        self, src: Endpoint, dst: Endpoint, desc: Descriptor, result: ImageResult
    ) -> BlobHow:
        """Make a blob present at the destination; concurrent callers share one transfer."""
        key = (dst.store.name, dst.repo, desc.digest)
        task = self._blob_tasks.get(key)
        if task is not None:
            await asyncio.shield(task)
            return "skipped"
        task = asyncio.ensure_future(self._transfer_blob(src, dst, desc, result))
        self._blob_tasks[key] = task
        wide = (dst.store.name, desc.digest)
        if wide not in self._blob_flights:
            self._blob_flights[wide] = task
            task.add_done_callback(lambda t: self._blob_flights.pop(wide, None))
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and (task.cancelled() or task.exception() is not None):
                self._blob_tasks.pop(key, None)
            raise

    async def _transfer_blob(
        self, src: Endpoint, dst: Endpoint, desc: Descriptor, result: ImageResult
    ) -> BlobHow:
        flight = self._blob_flights.get((dst.store.name, desc.digest))
        if flight is not None and flight is not asyncio.current_task():
            # The same blob is on its way into another repository of this store: one
            # fetch from the source, then a mount (or a skip) here, not one per repository.
            with suppress(Exception):
                await asyncio.shield(flight)
        async with self._blobs:
            how = await self._place_blob(src, dst, desc, result)
        self._blob_homes.setdefault((dst.store.name, desc.digest), set()).add(dst.repo)
        return how

    async def _place_blob(
        self, src: Endpoint, dst: Endpoint, desc: Descriptor, result: ImageResult
    ) -> BlobHow:
        homes = self._blob_homes.get((dst.store.name, desc.digest), set()) - {dst.repo}
        if src.store.name == dst.store.name and src.repo != dst.repo:
            homes = homes | {src.repo}
        # A known home means one POST can do it all (201 also when already present).
        for home in sorted(homes)[:2]:
            if await dst.store.mount_blob(dst.repo, desc, home):
                self.progress.bytes_moved(result.destination, desc.size)
                return "mounted"
        if (
            not homes
            and not self._is_new(dst)
            and await dst.store.blob_size(dst.repo, desc.digest) is not None
        ):
            self.progress.bytes_moved(result.destination, desc.size)
            return "skipped"
        if not homes and self._is_new(dst) and await self._in_untagged_repo(dst, desc):
            self.progress.bytes_moved(result.destination, desc.size)
            return "skipped"
        await self._stream_blob(src, dst, desc, result)
        return "copied"

    async def _in_untagged_repo(self, dst: Endpoint, desc: Descriptor) -> bool:
        """Tell whether a repository that lists no tags holds the blob all the same.

        A run stopped before any tag was written leaves such a repository: its blobs are
        complete but its tags list says it does not exist. A registry is asked with the
        POST that starts the upload anyway, mounting the blob from the repository itself
        (201: it is there; 202: the upload goes on in that session), so a cold copy costs
        no extra request. Other stores are not asked (their `mount_blob` means otherwise).
        """
        if not getattr(dst.store, "mounts_from_itself", False):
            return False
        try:
            return await dst.store.mount_blob(dst.repo, desc, dst.repo)
        except OcimirrorError as e:  # a registry refusing the form: upload as usual
            log.debug("mount from the repository itself refused", error=str(e))
            return False

    async def _stream_blob(
        self, src: Endpoint, dst: Endpoint, desc: Descriptor, result: ImageResult
    ) -> None:
        """GET → PUT streamed, retried as a whole on transient failures.

        The digest is checked once on the way: by the destination when it verifies
        uploads itself (a registry refuses a PUT whose `?digest=` does not match), else
        here, withholding the last chunk until the hash is known.
        """
        async for attempt in stamina.retry_context(
            on=_retry_hook, attempts=self.attempts, wait_initial=0.5, wait_max=15.0, timeout=None
        ):
            with attempt:
                moved = 0
                async with src.store.open_blob(src.repo, desc) as chunks:

                    async def counted(it: AsyncIterator[bytes] = chunks) -> AsyncIterator[bytes]:
                        nonlocal moved
                        async for chunk in it:
                            moved += len(chunk)
                            if moved > desc.size:
                                raise DigestMismatch(
                                    desc.digest, f"<more than {desc.size} bytes>", "blob"
                                )
                            self.progress.bytes_moved(result.destination, len(chunk))
                            yield chunk

                    stream: AsyncIterator[bytes] = counted()
                    if not dst.store.verifies_blobs:
                        stream = digests.verified(
                            stream, desc.digest, desc.size, f"blob {desc.digest}"
                        )
                    try:
                        await dst.store.put_blob(dst.repo, desc, stream)
                    except BaseException:
                        self.progress.bytes_moved(result.destination, -moved)
                        raise
                result.bytes_copied += desc.size


__all__ = ["Copier", "CopyOptions", "Endpoint", "ImageResult", "Progress", "ReferrerResult"]
