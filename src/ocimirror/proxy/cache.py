"""The pull-through cache of `ocimirror proxy`: manifests, blobs and tags, kept for reuse.

The bytes are kept by a `cachestore` place: a directory (`--cache DIR`), or an object store
(`--cache s3://bucket/prefix`, gs://, az://, file://, memory://). The cache directory
(with an object store: `--cache-local DIR`, else a temporary one) holds:

    blobs/<alg>/<hex>     every blob, manifests included, content-addressed and verified
                          (a directory cache only; an object store keeps them itself)
    blobs/<alg>/.tmp-*    downloads in progress (spool/.tmp-* with an object store);
                          a crash's leftovers go at the next start
    index.sqlite          manifests' media types, tag entries, access times for LRU

The blobs are the truth. A blob is written to a temporary file and moved (or put) into
place only once its digest (and size, when known) checked out; the index row of a
manifest is written after its blob and removed before it, so a crash at worst leaves a
blob the index does not call a manifest, which is simply fetched again. At startup the
blobs are listed once for sizes (rows naming a missing blob are dropped); from then on a
running total is kept. An object store also keeps manifests' media types and tags beside
the blobs, so a proxy with an empty index, or another proxy sharing the bucket, finds
them: a blob, manifest or tag the index does not know is looked up in the store before
the upstream is asked, and a tag found there is revalidated (a HEAD) before it is served.

Policy is the server's (`policy`), mechanism is here: manifests by digest and blobs are
kept until evicted; `tag()` answers stale entries too (with their `age`; `fresh=False`)
so the server can revalidate with a HEAD and `touch_tag()`, or serve the stale copy when
the upstream fails.

`fetch_blob()` is single-flight: the first caller for a digest starts one upstream
fetch in a task of its own, writing to a temporary file while hashing; every caller for
that digest, including ones arriving mid-download, reads that growing file from the
start (the latest chunks from memory, `blobstream.WINDOW`, as soon as they arrive). The blob's last byte (its last
chunk, when the size is unknown) is held back until the digest is verified, so no reader
ever gets a complete copy of wrong content: on failure every reader gets the error (a
client's response is cut short) and nothing is stored. A reader that goes away does not disturb the others, and when every reader has
gone the download still runs to its end in the background, warming the cache. With an
object store the verified file is then put there, callers arriving meanwhile still
reading the local file.

The access times that order eviction are updated on every hit in memory and written to
the index lazily (every `FLUSH_EVERY` hits or `FLUSH_INTERVAL` seconds, with any other
index write, and at `close()`); a blob without a recorded time counts from its file's
mtime (its object's last change). One process, one event loop per cache directory;
several proxies may share an object store, each evicting by what it knows.

Why it is long (one module of about 800 lines): `ProxyCache` is one state machine. The index, the
eviction and the single-flight downloads share one set of sizes and pins (a blob being
read or written must not be evicted; a download is listed only once verified), so split
apart each part would reach into the others' state. The streams readers get are in
`blobstream`, where the bytes are kept in `cachestore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .. import digest as digests
from ..atomicfile import open_temp
from ..errors import DigestMismatch, ManifestError, NotFound, OcimirrorError, ReferenceError
from ..manifest import MAX_MANIFEST_SIZE
from .blobstream import AHEAD, CHUNK_SIZE, BlobStream, Download, Handle, Progress, sync_file
from .cachefull import FullDisk
from .cachestore import LocalBlobs, ObjectBlobs, TagKey, remove_tree

if TYPE_CHECKING:
    from obstore.store import ObjectStore

log = structlog.get_logger(__name__)

#: The name of the index database inside the cache directory.
INDEX_NAME = "index.sqlite"

#: Seconds a presigned URL of a cached blob (`--cache-redirect`) stays valid.
REDIRECT_LIFETIME = 1200.0

#: With an object store, manifests' bytes kept in memory at most (the most recently used).
MANIFEST_MEMORY = 32 * 1024 * 1024

#: Access times are written to the index after this many unsaved hits...
FLUSH_EVERY = 1000

#: ...or when the oldest unsaved hit is this many seconds old.
FLUSH_INTERVAL = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    digest TEXT PRIMARY KEY,
    media_type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (upstream, repo, tag)
);
CREATE TABLE IF NOT EXISTS access (
    digest TEXT PRIMARY KEY,
    atime REAL NOT NULL
);
"""


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


@dataclass(frozen=True)
class UpstreamBlob:
    """An opened upstream blob: its chunks and, when the response said, its size."""

    chunks: AsyncIterable[bytes]
    size: int | None = None


#: Opens the upstream blob; entering raises for a failed request (404, 429, ...).
OpenUpstream = Callable[[], AbstractAsyncContextManager[AsyncIterable[bytes] | UpstreamBlob]]


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _retrieved(fut: asyncio.Future[None]) -> None:
    """Retrieve a dropped future's exception, so that it is not logged as unhandled."""
    if not fut.cancelled():
        fut.exception()


def _joined(parts: list[bytes]) -> bytes:
    """Return the chunks as one `bytes`, without a copy when there is one."""
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ProxyCache:
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
        self.directory = Path(directory)
        self._place: LocalBlobs | ObjectBlobs = (
            LocalBlobs(self.directory)
            if store is None
            else ObjectBlobs(store, self.directory / "spool", name=store_name)
        )
        self.max_bytes = max_bytes
        self.tag_ttl = tag_ttl
        self._clock = clock
        self._blobs: OrderedDict[str, int] = OrderedDict()  # digest -> size, oldest first
        self._atimes: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._media_types: dict[str, str] = {}
        self._tags: dict[TagKey, tuple[str, float]] = {}
        self._downloads: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pins: dict[str, int] = {}
        self._raw: OrderedDict[str, bytes] = OrderedDict()
        self._tag_lookups: dict[TagKey, asyncio.Future[tuple[str, float] | None]] = {}
        self._raw_bytes = 0
        self._total = 0
        self._closed = False
        self.disk = FullDisk(str(self._place))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.directory / INDEX_NAME, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._load()
        self._last_flush = clock()
        self._evict()

    # -- startup ------------------------------------------------------------------------

    def _load(self) -> None:
        """List the blobs, then read the index, dropping rows for missing blobs."""
        found = self._place.scan()
        recorded = dict(self._db.execute("SELECT digest, atime FROM access").fetchall())
        atimes = {dg: float(recorded.get(dg, mtime)) for dg, (_, mtime) in found.items()}
        for dg in sorted(found, key=atimes.__getitem__):
            self._blobs[dg] = found[dg][0]
            self._atimes[dg] = atimes[dg]
            self._total += found[dg][0]
        manifests = self._db.execute("SELECT digest, media_type FROM manifests").fetchall()
        self._media_types = {dg: media_type for dg, media_type in manifests if dg in found}
        rows = self._db.execute("SELECT upstream, repo, tag, digest, fetched_at FROM tags")
        for upstream, repo, tag, dg, fetched_at in rows.fetchall():
            if dg in self._media_types:
                self._tags[(upstream, repo, tag)] = (dg, float(fetched_at))
        stale = {dg for dg in recorded if dg not in found}
        stale.update(dg for dg, _ in manifests if dg not in found)
        if stale:
            self._delete_rows(sorted(stale))
        with self._db:
            self._db.execute("DELETE FROM tags WHERE digest NOT IN (SELECT digest FROM manifests)")

    # -- bookkeeping --------------------------------------------------------------------

    def store_requests(self) -> tuple[Counter[str], Counter[str]] | None:
        """Return the requests sent to the object store and those that failed, by operation
        (None: the blobs are in a directory)."""
        if isinstance(self._place, ObjectBlobs):
            return self._place.requests, self._place.failures
        return None

    @property
    def place(self) -> str:
        """Name where the blobs are kept (a directory or an object store)."""
        return str(self._place)

    @property
    def total_bytes(self) -> int:
        """Return the bytes held in blobs (manifests included)."""
        return self._total

    def _touch(self, digest: str) -> None:
        """Mark a blob as used now (in memory; written to the index lazily)."""
        self._blobs.move_to_end(digest)
        now = self._clock()
        self._atimes[digest] = now
        self._dirty.add(digest)
        if len(self._dirty) >= FLUSH_EVERY or now - self._last_flush >= FLUSH_INTERVAL:
            self.flush()

    def _add_blob(self, digest: str, size: int) -> None:
        self._total += size - self._blobs.get(digest, 0)
        self._blobs[digest] = size
        self._touch(digest)

    def flush(self) -> None:
        """Write the access times of recent hits to the index."""
        self._last_flush = self._clock()
        if not self._dirty:
            return
        rows = [(dg, self._atimes[dg]) for dg in self._dirty if dg in self._atimes]
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO access (digest, atime) VALUES (?, ?)", rows
                )
        except sqlite3.Error as e:
            if not self.disk.noted(e):
                raise
            return  # kept in memory, written at a later flush
        self._dirty.clear()

    def _pin(self, digest: str) -> None:
        self._pins[digest] = self._pins.get(digest, 0) + 1

    def _unpin(self, digest: str) -> None:
        left = self._pins[digest] - 1
        if left:
            self._pins[digest] = left
            return
        del self._pins[digest]
        if not self._closed:
            self._evict()

    def _evict(self) -> None:
        """Drop least-recently-used blobs not in use until the total fits `max_bytes`."""
        if self.max_bytes is None or self._total <= self.max_bytes:
            return
        excess = self._total - self.max_bytes
        victims: list[str] = []
        for dg, size in self._blobs.items():
            if excess <= 0:
                break
            if dg not in self._pins:
                victims.append(dg)
                excess -= size
        if victims:
            self._forget(victims)
            log.debug("proxy cache evicted", blobs=len(victims), total_bytes=self._total)

    def _forget(self, victims: list[str]) -> None:
        """Remove blobs (and a manifest's tags) from the index, then their files."""
        gone = set(victims)
        keys = [key for key, (dg, _) in self._tags.items() if dg in gone]
        for key in keys:
            del self._tags[key]
        self._delete_rows(victims)
        for dg in victims:
            self._total -= self._blobs.pop(dg, 0)
            self._atimes.pop(dg, None)
            self._dirty.discard(dg)
            self._media_types.pop(dg, None)
            raw = self._raw.pop(dg, None)
            self._raw_bytes -= len(raw) if raw is not None else 0
        for key in keys:
            self._place.remove_tag(key)
        self._place.remove(victims)

    def _delete_rows(self, digests_: list[str]) -> None:
        """Delete every index row about these digests (tags pointing at them included)."""
        rows = [(dg,) for dg in digests_]
        with self._db:
            self._db.executemany("DELETE FROM tags WHERE digest = ?", rows)
            self._db.executemany("DELETE FROM manifests WHERE digest = ?", rows)
            self._db.executemany("DELETE FROM access WHERE digest = ?", rows)

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

    def _note_manifest(self, digest: str, media_type: str) -> None:
        """Record that a blob is a manifest of this media type (within a transaction)."""
        self._media_types[digest] = media_type
        self._db.execute(
            "INSERT OR REPLACE INTO manifests (digest, media_type) VALUES (?, ?)",
            (digest, media_type),
        )

    def _keep_raw(self, digest: str, raw: bytes) -> None:
        """With an object store, keep a manifest's bytes in memory (the most recent ones)."""
        if self._place.local:
            return
        self._raw.pop(digest, None)
        self._raw[digest] = raw
        self._raw_bytes += len(raw)
        while self._raw_bytes > MANIFEST_MEMORY:
            _, old = self._raw.popitem(last=False)
            self._raw_bytes -= len(old)

    def _set_tag(self, key: TagKey, digest: str, fetched_at: float) -> None:
        self._tags[key] = (digest, fetched_at)
        self._db.execute(
            "INSERT OR REPLACE INTO tags (upstream, repo, tag, digest, fetched_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (*key, digest, fetched_at),
        )

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
        what = f"blob {dl.digest}"
        h = digests.hasher(dl.digest)
        total = 0
        # A chunk goes to the readers (from memory) as it arrives; storing it (hash + file
        # write, in a worker thread) runs while the next chunks are read from the
        # upstream, so the thread hop is on neither path. One store in flight: the chunks
        # arriving meanwhile go in the next one (fewer hops), and the fetch waits only
        # when `AHEAD` bytes are published and not stored. Stores go in order, so the
        # hash sees the bytes in order.
        writing: asyncio.Future[None] | None = None
        unstored: list[bytes] = []
        behind = 0
        try:
            async with open_upstream() as opened:
                if isinstance(opened, UpstreamBlob):
                    chunks, declared = opened.chunks, opened.size
                else:
                    chunks, declared = opened, None
                if dl.size is None:
                    dl.size = declared
                elif declared is not None and declared != dl.size:
                    raise DigestMismatch(dl.digest, f"<{declared} bytes, expected {dl.size}>", what)
                dl.opened = True
                dl.notify()
                # Small chunks are gathered up to CHUNK_SIZE per write (one thread hop); a
                # chunk that size already (aiohttp's, mostly) is written as it is, no copy.
                parts: list[bytes] = []
                pending = 0
                async for chunk in chunks:
                    total += len(chunk)
                    if dl.size is not None and total > dl.size:
                        raise DigestMismatch(dl.digest, f"<more than {dl.size} bytes>", what)
                    parts.append(chunk)
                    pending += len(chunk)
                    if pending >= CHUNK_SIZE:
                        data = _joined(parts)
                        parts.clear()
                        pending = 0
                        dl.publish(data)
                        unstored.append(data)
                        behind += len(data)
                        if writing is not None and (writing.done() or behind >= AHEAD):
                            await writing
                            writing = None
                        if writing is None:
                            writing = asyncio.ensure_future(dl.store(h, unstored))
                            unstored, behind = [], 0
                if parts:
                    data = _joined(parts)
                    dl.publish(data)
                    unstored.append(data)
                if writing is not None:
                    await writing
                if unstored:
                    await dl.store(h, unstored)
            actual = f"{digests.algorithm(dl.digest)}:{h.hexdigest()}"
            if actual != dl.digest:
                raise DigestMismatch(dl.digest, actual, what)
            if dl.size is not None and total != dl.size:
                raise DigestMismatch(
                    dl.digest, f"{actual} ({total} bytes, expected {dl.size})", what
                )
            await dl.handle.run(sync_file)
        except BaseException as e:
            if writing is not None:
                writing.cancel()  # the thread finishes; the handle closes after it
                writing.add_done_callback(_retrieved)
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


__all__ = [
    "CHUNK_SIZE",
    "BlobStream",
    "CachedManifest",
    "OpenUpstream",
    "ProxyCache",
    "TagEntry",
    "UpstreamBlob",
]
