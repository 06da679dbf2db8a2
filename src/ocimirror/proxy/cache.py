"""The pull-through cache of `ocimirror proxy`: manifests, blobs and tags, kept for reuse.

The bytes are kept by a `cachestore` place: a directory (`--cache DIR`), or an object store
(`--cache s3://bucket/prefix`, gs://, az://, file://, memory://). The cache directory
(with an object store: `--cache-local DIR`, else a temporary one) holds:

    blobs/<alg>/<hex>     every blob, manifests included, content-addressed and verified
                          (a directory cache only; an object store keeps them itself)
    blobs/<alg>/.tmp-*    downloads in progress (spool/.tmp-* with an object store);
                          a crash's leftovers go at the next start
    index.sqlite          manifests' media types, tag entries, access times for LRU

`ProxyCache` is the cache's operations on the state its base `CacheIndex` (`cacheindex`)
keeps: the index, the sizes and pins, the eviction. A blob is written to a temporary file
and moved (or put) into place only once its digest (and size, when known) checked out.
An object store also keeps manifests' media types and tags beside the blobs, so a proxy
with an empty index, or another proxy sharing the bucket, finds them: a blob, manifest or
tag the index does not know is looked up in the store before the upstream is asked, and a
tag found there is revalidated (a HEAD) before it is served.

Policy is the server's (`policy`), mechanism is here: manifests by digest and blobs are
kept until evicted; `tag()` answers stale entries too (with their `age`; `fresh=False`)
so the server can revalidate with a HEAD and `touch_tag()`, or serve the stale copy when
the upstream fails.

`fetch_blob()` is single-flight: the first caller for a digest starts one upstream
fetch (`blobfetch.fetch_verified`) in a task of its own, writing to a temporary file
while hashing; every caller for that digest, including ones arriving mid-download, reads
that growing file from the start (the latest chunks from memory, `blobstream.WINDOW`, as
soon as they arrive). The blob's last byte (its last chunk, when the size is unknown) is
held back until the digest is verified, so no reader ever gets a complete copy of wrong
content: on failure every reader gets the error (a client's response is cut short) and
nothing is stored. A reader that goes away does not disturb the others, and when every
reader has gone the download still runs to its end in the background, warming the cache.
With an object store the verified file is then put there, callers arriving meanwhile
still reading the local file. A blob being read or written is pinned: not evicted, and a
download is listed in the index only once verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .. import digest as digests
from ..atomicfile import open_temp
from ..errors import ManifestError, NotFound, OcimirrorError, ReferenceError
from ..manifest import MAX_MANIFEST_SIZE
from .blobfetch import OpenUpstream, fetch_verified
from .blobstream import BlobStream, Download, Handle, Progress
from .cacheindex import CacheIndex
from .cachestore import LocalBlobs, ObjectBlobs, TagKey, remove_tree

if TYPE_CHECKING:
    from obstore.store import ObjectStore

log = structlog.get_logger(__name__)

#: Seconds a presigned URL of a cached blob (`--cache-redirect`) stays valid.
REDIRECT_LIFETIME = 1200.0


@dataclass(frozen=True)
class CachedManifest:
    """A cached manifest: its exact bytes and the media type it was received with."""

    digest: str
    media_type: str
    raw: bytes

    @property
    def size(self) -> int:
        """Return the length of the manifest in bytes."""
        return len(self.raw)


@dataclass(frozen=True)
class TagEntry:
    """Where a tag pointed when last fetched or revalidated, and whether that is recent."""

    digest: str
    media_type: str
    fetched_at: float
    fresh: bool
    #: Seconds since it was fetched or revalidated (by the cache's clock), for the policy.
    age: float


def _is_digest(reference: str) -> bool:
    return ":" in reference


class ProxyCache(CacheIndex):
    """The pull-through cache: verified blobs and manifests, tags with a TTL, LRU."""

    def __init__(
        self,
        directory: Path | None,
        *,
        store: ObjectStore | None = None,
        store_name: str = "",
        max_bytes: int | None = None,
        tag_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if needed) the cache at `directory`, or in `store` with its index
        and downloads in `directory` (None: a temporary directory, removed at `close()`);
        the blobs are listed once for sizes."""
        self._temporary = directory is None
        if directory is None:
            if store is None:
                raise ValueError("a cache without an object store needs a directory")
            directory = Path(tempfile.mkdtemp(prefix="ocimirror-proxy-cache-"))
        directory = Path(directory)
        place: LocalBlobs | ObjectBlobs = (
            LocalBlobs(directory)
            if store is None
            else ObjectBlobs(store, directory / "spool", name=store_name)
        )
        self.tag_ttl = tag_ttl
        self._downloads: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tag_lookups: dict[TagKey, asyncio.Future[tuple[str, float] | None]] = {}
        super().__init__(directory, place, max_bytes=max_bytes, clock=clock)

    # -- manifests ----------------------------------------------------------------------

    async def put_manifest(
        self, upstream: str, repo: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """Store a manifest's exact bytes; a tag `reference` also points at it from now on.

        Returns the digest. A digest `reference` must match the content (DigestMismatch).
        """
        if len(raw) > MAX_MANIFEST_SIZE:
            raise ManifestError(
                f"manifest is too large: {len(raw)} bytes (limit {MAX_MANIFEST_SIZE})"
            )
        if _is_digest(reference):
            if not digests.is_valid(reference):
                raise ReferenceError(f"invalid digest {reference!r}")
            digests.verify(raw, reference, "manifest")
            dg = reference
        elif not reference:
            raise ReferenceError("empty tag")
        else:
            dg = digests.of(raw)
        key = (upstream, repo, reference)
        tagged = not _is_digest(reference)
        self._pin(dg)  # not evicted between its writes and its index entries
        try:
            if dg in self._blobs and (dg in self._media_types or self._place.local):
                self._touch(dg)
            else:
                await self._place.write(dg, raw, media_type)
                self._add_blob(dg, len(raw))
            if tagged and self._tags.get(key, ("",))[0] != dg:
                await self._place.write_tag(key, dg)
            self._keep_raw(dg, raw)
            with self._db:
                self._note_manifest(dg, media_type)
                if tagged:
                    self._set_tag(key, dg, self._clock())
        finally:
            self._unpin(dg)  # evicts, if over the limit
        self.flush()
        return dg

    async def get_manifest(self, digest: str) -> CachedManifest | None:
        """Return a cached manifest by digest (re-verified on read), or None.

        With an object store, a manifest the index does not know is looked for there.
        """
        media_type = self._media_types.get(digest)
        known = media_type is not None
        raw = self._raw.get(digest) if known else None
        if raw is not None:
            self._raw.move_to_end(digest)
            self._touch(digest)
            return CachedManifest(digest, media_type or "", raw)
        self._pin(digest)
        try:
            if media_type is None:
                media_type = await self._place.media_type(digest)
                if media_type is None:
                    return None
            raw = await self._place.read(digest)
        except OcimirrorError as e:
            log.warning("proxy cache store failed", digest=digest, error=str(e))
            return None
        finally:
            self._unpin(digest)
        if raw is not None and digests.of(raw, digests.algorithm(digest)) != digest:
            log.warning("proxy cache dropped a corrupt manifest", digest=digest)
            self._forget([digest])
            return None
        if not known:
            if raw is None or len(raw) > MAX_MANIFEST_SIZE:
                return None
            if digest not in self._blobs:
                self._add_blob(digest, len(raw))
            self._keep_raw(digest, raw)
            with self._db:
                self._note_manifest(digest, media_type)
            self._evict()
        elif digest not in self._media_types:
            return None  # evicted meanwhile: the pin kept the file, not the index entry
        elif raw is None:
            log.warning("proxy cache dropped a missing manifest", digest=digest)
            self._forget([digest])
            return None
        else:
            self._keep_raw(digest, raw)
        self._touch(digest)
        return CachedManifest(digest, media_type, raw)

    async def tag(self, upstream: str, repo: str, tag: str) -> TagEntry | None:
        """Return where a tag pointed when last fetched, stale entries included, or None.

        With an object store, a tag the index does not know is looked for there; one found
        comes back stale, to be revalidated before it is served.
        """
        key = (upstream, repo, tag)
        entry = self._tags.get(key)
        if entry is None:
            entry = await self._tag_from_store(key)
            if entry is None:
                return None
        dg, fetched_at = entry
        media_type = self._media_types.get(dg)
        if media_type is None:
            return None
        age = self._clock() - fetched_at
        return TagEntry(dg, media_type, fetched_at, age < self.tag_ttl, age)

    async def _tag_from_store(self, key: TagKey) -> tuple[str, float] | None:
        """Find a tag in the object store (another proxy's, or this one's before a restart);
        callers asking for the same tag at once share one lookup."""
        if self._place.local:
            return None
        lookup = self._tag_lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up_tag(key))
            self._tag_lookups[key] = lookup
            lookup.add_done_callback(lambda _: self._tag_lookups.pop(key, None))
        return await asyncio.shield(lookup)

    async def _look_up_tag(self, key: TagKey) -> tuple[str, float] | None:
        try:
            dg = await self._place.read_tag(key)
        except OcimirrorError as e:
            log.warning("proxy cache store failed", tag="/".join(key), error=str(e))
            return None
        if dg is None or not digests.is_valid(dg) or await self.get_manifest(dg) is None:
            return None
        if key not in self._tags:
            with self._db:
                self._set_tag(key, dg, 0.0)
        return self._tags[key]

    async def touch_tag(self, upstream: str, repo: str, tag: str, digest: str) -> bool:
        """Record that the upstream's tag points at `digest` as of now.

        Returns False, changing nothing, when that manifest is not cached: the caller must
        then fetch it and `put_manifest()` it.
        """
        if digest not in self._media_types:
            return False
        key = (upstream, repo, tag)
        if self._tags.get(key, ("",))[0] != digest:
            self._pin(digest)
            try:
                await self._place.write_tag(key, digest)
            except OcimirrorError as e:
                log.warning("proxy cache store failed", tag="/".join(key), error=str(e))
            finally:
                self._unpin(digest)
            if digest not in self._media_types:
                return False  # dropped meanwhile (a corrupt copy, say)
        with self._db:
            self._set_tag(key, digest, self._clock())
        return True

    def forget_tag(self, upstream: str, repo: str, tag: str) -> bool:
        """Drop a tag entry (its manifest stays); tell whether there was one."""
        key = (upstream, repo, tag)
        self._place.remove_tag(key)
        if self._tags.pop(key, None) is None:
            return False
        with self._db:
            self._db.execute(
                "DELETE FROM tags WHERE upstream = ? AND repo = ? AND tag = ?",
                (upstream, repo, tag),
            )
        return True

    # -- blobs --------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """Tell whether a blob (or manifest) is cached, without counting it as a hit."""
        return digest in self._blobs

    def fetching(self, digest: str) -> bool:
        """Tell whether an upstream fetch of a blob is in flight."""
        return digest in self._downloads

    def blob_size(self, digest: str) -> int | None:
        """Return the size of a cached blob, or None, without counting it as a hit."""
        return self._blobs.get(digest)

    def blob_path(self, digest: str) -> Path | None:
        """Return the file of a cached blob, counting a hit, or None.

        The file is not pinned: should it be evicted before it is opened, opening fails
        (aiohttp's FileResponse answers 404). `open_blob()` pins while it streams.
        """
        if digest not in self._blobs:
            return None
        path = self._place.file(digest)
        if path is not None:
            self._touch(digest)
        return path

    async def discover(self, digest: str) -> bool:
        """Tell whether a blob is cached, looking in the object store for one the index does
        not know (put there by another proxy); no hit is counted."""
        if digest in self._blobs:
            return True
        if self._place.local or digest in self._downloads or not digests.is_valid(digest):
            return False
        try:
            size = await self._place.lookup(digest)
        except OcimirrorError as e:
            log.warning("proxy cache store failed", digest=digest, error=str(e))
            return False
        if size is None:
            return False
        if digest not in self._blobs:
            self._add_blob(digest, size)
            self._evict()
        return digest in self._blobs

    async def blob_url(self, digest: str, lifetime: float = REDIRECT_LIFETIME) -> str | None:
        """Return a presigned URL of a cached blob's object, counting a hit; None when it is
        not cached, the store cannot sign (a directory, memory, file) or signing failed."""
        if digest not in self._blobs or not isinstance(self._place, ObjectBlobs):
            return None
        try:
            url = await self._place.presign(digest, timedelta(seconds=lifetime))
        except (OcimirrorError, NotImplementedError, TypeError) as e:
            log.warning("proxy cache store cannot presign", digest=digest, error=str(e))
            return None
        if digest in self._blobs:
            self._touch(digest)
        return url

    async def _open_cached(self, digest: str) -> BlobStream | None:
        """Open a cached blob as a pinned stream, counting a hit, or return None."""
        size = self._blobs.get(digest)
        if size is None:
            return None
        path = self._place.file(digest)
        handle: Handle | None = None
        chunks: AsyncGenerator[bytes] | None = None
        self._pin(digest)  # before any await: not evicted while it is being opened
        try:
            if path is not None:
                # An open is quick; no thread hop, so the file seen in the index is the one opened.
                f = open(path, "rb", buffering=0)  # noqa: ASYNC230, SIM115 -- BlobStream closes
                handle = Handle(f)
            else:
                chunks = await self._place.open_range(digest, 0, size - 1)
        except (FileNotFoundError, NotADirectoryError):
            log.warning("proxy cache dropped a blob that is gone", digest=digest)
            self._forget([digest])
            self._unpin(digest)
            return None
        except OcimirrorError as e:
            log.warning("proxy cache store failed", digest=digest, error=str(e))
            self._unpin(digest)
            return None
        except BaseException:
            self._unpin(digest)
            raise
        if digest not in self._blobs:  # dropped meanwhile
            if chunks is not None:
                await chunks.aclose()
            if handle is not None:
                handle.close()
            self._unpin(digest)
            return None
        self._touch(digest)
        progress = Progress(digest, path or Path(digest), size, done=True)
        release = partial(self._unpin, digest)
        return BlobStream(progress, handle, release, cached=True, chunks=chunks)

    @asynccontextmanager
    async def open_range(
        self, digest: str, first: int, last: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Read bytes `first`..`last` of a cached blob, pinned meanwhile, counting a hit;
        NotFound when it is not (or no longer) there."""
        if digest not in self._blobs:
            raise NotFound(f"blob {digest} is not cached")
        self._pin(digest)
        try:
            try:
                chunks = await self._place.open_range(digest, first, last)
            except (FileNotFoundError, NotADirectoryError):
                self._forget([digest])
                raise NotFound(f"blob {digest} is gone from the cache") from None
            try:
                if digest not in self._blobs:
                    raise NotFound(f"blob {digest} is gone from the cache")
                self._touch(digest)
                yield chunks
            finally:
                await chunks.aclose()
        finally:
            self._unpin(digest)

    @asynccontextmanager
    async def open_blob(self, digest: str) -> AsyncIterator[BlobStream]:
        """Stream a cached blob, pinned against eviction meanwhile; NotFound if absent."""
        stream = await self._open_cached(digest)
        if stream is None:
            raise NotFound(f"blob {digest} is not cached")
        try:
            yield stream
        finally:
            stream.close()

    @asynccontextmanager
    async def fetch_blob(
        self, digest: str, size: int | None, open_upstream: OpenUpstream
    ) -> AsyncIterator[BlobStream]:
        """Stream a blob from the cache, or from the one upstream fetch shared by all callers.

        Entering waits until the upstream answered and raises its error (NotFound,
        RateLimited...); iterating raises DigestMismatch or the upstream's error when the
        fetch fails, and then nothing is stored. `size`, when known, is enforced.
        """
        if not digests.is_valid(digest):
            raise ReferenceError(f"invalid digest {digest!r}")
        if self._closed:
            raise OcimirrorError("the proxy cache is closed")
        stream = await self._open_cached(digest)
        if stream is None:
            dl = self._downloads.get(digest) or self._start_download(digest, size, open_upstream)
            stream = self._follow(dl)
        try:
            await stream.wait_opened()
            yield stream
        finally:
            stream.close()

    def _follow(self, dl: Download) -> BlobStream:
        """Open a pinned reader of a download's growing temporary file."""
        f = open(dl.path, "rb", buffering=0)  # noqa: SIM115 -- closed by BlobStream.close
        self._pin(dl.digest)
        return BlobStream(dl, Handle(f), lambda: self._unpin(dl.digest), cached=False)

    def _start_download(
        self, digest: str, size: int | None, open_upstream: OpenUpstream
    ) -> Download:
        tmp, f = open_temp(self._place.spool(digest))
        dl = Download(digest, tmp, f, size)
        self._downloads[digest] = dl
        task = asyncio.create_task(self._download(dl, open_upstream), name=f"fetch {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return dl

    async def _download(self, dl: Download, open_upstream: OpenUpstream) -> None:
        """Fetch a blob once into its temporary file, verify it, and move it into place."""
        try:
            total = await fetch_verified(dl, open_upstream)
        except BaseException as e:
            self._fail(dl, e)
            if isinstance(e, Exception) and not self.disk.noted(e):
                log.info("proxy cache fetch failed", digest=dl.digest, error=str(e))
            if isinstance(e, Exception):
                return  # the readers have it; nobody awaits this task
            raise
        dl.handle.close()
        if isinstance(self._place, ObjectBlobs):
            await self._put(dl, total)
            return
        # No await from here on: a caller sees either the download or the stored blob.
        self._place.commit(dl.digest, dl.path)
        del self._downloads[dl.digest]
        self._add_blob(dl.digest, total)
        self._finish(dl, total)
        self._evict()
        await self._place.settle(dl.digest)

    @staticmethod
    def _finish(dl: Download, total: int) -> None:
        """Let every reader of a verified download have all of it."""
        dl.size = total
        dl.available = total
        dl.done = True
        dl.notify()

    async def _put(self, dl: Download, total: int) -> None:
        """Put a verified download in the object store; callers meanwhile read its file."""
        assert isinstance(self._place, ObjectBlobs)
        self._finish(dl, total)
        stored = False
        try:
            await self._place.put_file(dl.digest, dl.path)
            stored = True
        except OcimirrorError as e:
            log.warning("proxy cache store failed", digest=dl.digest, error=str(e))
        finally:
            # No await from here on: a caller sees either the download or the stored blob.
            if self._downloads.get(dl.digest) is dl:
                del self._downloads[dl.digest]
            with contextlib.suppress(FileNotFoundError):
                dl.path.unlink()  # readers still have it open
        if stored:
            self._add_blob(dl.digest, total)
            self._evict()

    def _fail(self, dl: Download, error: BaseException) -> None:
        """End a download: readers get `error`, the temporary file goes, nothing is kept."""
        if self._downloads.get(dl.digest) is dl:
            del self._downloads[dl.digest]
        dl.handle.close()
        dl.drop_window()
        with contextlib.suppress(FileNotFoundError):
            dl.path.unlink()
        if isinstance(error, asyncio.CancelledError):
            error = OcimirrorError(f"fetch of {dl.digest} stopped: the proxy cache was closed")
        dl.error = error
        dl.notify()

    # -- lifetime -----------------------------------------------------------------------

    async def idle(self) -> None:
        """Wait until the work in the background is done: downloads in flight (and their
        puts to an object store), deletes of evicted blobs."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._place.drain()

    async def close(self) -> None:
        """Stop downloads in flight (their readers get an error), save access times."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.flush()
        self._db.close()
        await self._place.drain()
        if self._temporary:
            remove_tree(self.directory)


__all__ = ["BlobStream", "CachedManifest", "ProxyCache", "TagEntry"]
