"""The pull-through cache of `ocimirror proxy`: manifests, blobs and tags kept on disk.

The cache directory holds:

    blobs/<alg>/<hex>     every blob, manifests included, content-addressed and verified
    blobs/<alg>/.tmp-*    downloads in progress (a crash's leftovers go at the next start)
    index.sqlite          manifests' media types, tag entries, access times for LRU

The blob files are the truth. A blob is written to a temporary file and renamed into
place only once its digest (and size, when known) checked out; the index row of a
manifest is written after its file and removed before it, so a crash at worst leaves a
blob the index does not call a manifest, which is simply fetched again. At startup the
directory is scanned once for sizes (rows naming a missing file are dropped); from then
on a running total is kept.

Policy is the server's, mechanism is here: manifests by digest and blobs are kept until
evicted; `tag()` answers stale entries too (`fresh=False`) so the server can revalidate
with a HEAD and `touch_tag()`, or serve the stale copy when the upstream fails.

`fetch_blob()` is single-flight: the first caller for a digest starts one upstream
fetch in a task of its own, writing to a temporary file while hashing; every caller for
that digest, including ones arriving mid-download, reads that growing file from the
start. The last chunk is held back until the digest is verified, so no reader ever gets
a complete copy of wrong content: on failure every reader gets the error and nothing is
stored. A reader that goes away does not disturb the others, and when every reader has
gone the download still runs to its end in the background, warming the cache.

The access times that order eviction are updated on every hit in memory and written to
the index lazily (every `FLUSH_EVERY` hits or `FLUSH_INTERVAL` seconds, with any other
index write, and at `close()`); a blob without a recorded time counts from its file's
mtime. One process, one event loop per cache directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import structlog

from .. import digest as digests
from ..errors import DigestMismatch, ManifestError, NotFound, OcimirrorError, ReferenceError
from ..manifest import MAX_MANIFEST_SIZE
from ..stores.layout import _fsync_dir, _open_temp, _write_atomic

log = structlog.get_logger(__name__)

#: The largest chunk a blob stream yields, and how much is written per thread hop.
CHUNK_SIZE = 256 * 1024

#: The name of the index database inside the cache directory.
INDEX_NAME = "index.sqlite"

#: Access times are written to the index after this many unsaved hits...
FLUSH_EVERY = 1000

#: ...or when the oldest unsaved hit is this many seconds old.
FLUSH_INTERVAL = 60.0

_TMP_PREFIX = ".tmp-"

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

_T = TypeVar("_T")
TagKey = tuple[str, str, str]


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


@dataclass(frozen=True)
class UpstreamBlob:
    """An opened upstream blob: its chunks and, when the response said, its size."""

    chunks: AsyncIterable[bytes]
    size: int | None = None


#: Opens the upstream blob; entering raises for a failed request (404, 429, ...).
OpenUpstream = Callable[[], AbstractAsyncContextManager[AsyncIterable[bytes] | UpstreamBlob]]


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _write_blob_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data)


def _read_verified(path: Path, digest: str) -> bytes | None:
    """Return a small file's bytes if it exists and hashes to `digest`, else None."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return raw if digests.of(raw, digests.algorithm(digest)) == digest else None


def _write_hashed(f: BinaryIO, h: Any, data: bytes) -> None:
    h.update(data)
    f.write(data)
    f.flush()


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _pread(f: BinaryIO, n: int, offset: int) -> bytes:
    return os.pread(f.fileno(), n, offset)


class _Handle:
    """A file used from worker threads and closed only once no thread still uses it."""

    def __init__(self, f: BinaryIO) -> None:
        self.file = f
        self._busy: asyncio.Future[Any] | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(self.file, *args)` in a worker thread; cancelling leaves it to finish."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn, self.file, *args)
        self._busy = fut
        return await asyncio.shield(fut)

    def close(self) -> None:
        """Close the file now, or as soon as the thread still using it is done."""
        busy = self._busy
        if busy is None or busy.done():
            self.file.close()
            return

        def later(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled():
                fut.exception()  # retrieved, so it is not logged as unhandled
            self.file.close()

        busy.add_done_callback(later)


class _Progress:
    """How much of a blob file may be read so far, and a way to wait for more."""

    def __init__(self, digest: str, path: Path, size: int | None, *, done: bool) -> None:
        self.digest = digest
        self.path = path
        self.size = size
        self.available = (size or 0) if done else 0
        self.opened = done
        self.done = done
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """Return the event the next `notify()` sets."""
        return self._changed

    def notify(self) -> None:
        """Wake every reader waiting for a change."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()


class _Download(_Progress):
    """One upstream fetch in flight, written to a temporary file as it arrives."""

    def __init__(self, digest: str, tmp: Path, f: BinaryIO, size: int | None) -> None:
        super().__init__(digest, tmp, size, done=False)
        self.handle = _Handle(f)
        self.written = 0

    async def write(self, h: Any, data: bytes) -> None:
        """Append and hash `data`, then let readers have everything up to its start."""
        before = self.written
        await self.handle.run(_write_hashed, h, data)
        self.written += len(data)
        if before > self.available:
            self.available = before
            self.notify()


class BlobStream:
    """A blob's bytes from its start, as an async iterator of chunks of up to 256 KiB."""

    def __init__(
        self, progress: _Progress, handle: _Handle, release: Callable[[], None], *, cached: bool
    ) -> None:
        """Read `progress`'s file through `handle`; `release` runs once, at `close()`."""
        self.digest = progress.digest
        #: True when served from a complete file, False when following a download.
        self.cached = cached
        self._progress = progress
        self._handle = handle
        self._release: Callable[[], None] | None = release
        self._offset = 0

    @property
    def size(self) -> int | None:
        """Return the blob's size, when the caller or the upstream said it."""
        return self._progress.size

    async def wait_opened(self) -> None:
        """Wait until the upstream answered, raising its error if it failed."""
        p = self._progress
        while True:
            if p.error is not None:
                raise p.error
            if p.opened:
                return
            await p.changed().wait()

    def __aiter__(self) -> BlobStream:
        return self

    async def __anext__(self) -> bytes:
        p = self._progress
        while True:
            changed = p.changed()
            if p.error is not None:
                raise p.error
            if self._offset < p.available:
                n = min(CHUNK_SIZE, p.available - self._offset)
                data = await self._handle.run(_pread, n, self._offset)
                if not data:
                    raise OcimirrorError(f"{p.path}: blob file shorter than {p.available} bytes")
                self._offset += len(data)
                return data
            if p.done:
                raise StopAsyncIteration
            await changed.wait()

    def close(self) -> None:
        """Close the file and unpin the blob; idempotent."""
        if self._release is not None:
            release, self._release = self._release, None
            self._handle.close()
            release()


class ProxyCache:
    """The on-disk pull-through cache: verified blobs and manifests, tags with a TTL, LRU."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int | None = None,
        tag_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if needed) the cache at `directory`, scanning it once for sizes."""
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.tag_ttl = tag_ttl
        self._clock = clock
        self._blobs: OrderedDict[str, int] = OrderedDict()  # digest -> size, oldest first
        self._atimes: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._media_types: dict[str, str] = {}
        self._tags: dict[TagKey, tuple[str, float]] = {}
        self._downloads: dict[str, _Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pins: dict[str, int] = {}
        self._total = 0
        self._closed = False
        (self.directory / "blobs").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.directory / INDEX_NAME, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._load()
        self._last_flush = clock()
        self._evict()

    # -- startup ------------------------------------------------------------------------

    def _load(self) -> None:
        """Scan the blob files, then read the index, dropping rows for missing files."""
        found: dict[str, tuple[int, float]] = {}
        for alg_dir in (self.directory / "blobs").iterdir():
            if not alg_dir.is_dir():
                continue
            for entry in os.scandir(alg_dir):
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                    continue
                dg = f"{alg_dir.name}:{entry.name}"
                if digests.is_valid(dg) and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found[dg] = (st.st_size, st.st_mtime)
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

    def _path(self, digest: str) -> Path:
        return self.directory / "blobs" / digests.algorithm(digest) / digests.encoded(digest)

    @property
    def total_bytes(self) -> int:
        """Return the bytes held in blob files (manifests included)."""
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
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO access (digest, atime) VALUES (?, ?)", rows
            )
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
            with contextlib.suppress(FileNotFoundError):
                self._path(dg).unlink()

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
        if dg in self._blobs:
            self._touch(dg)
        else:
            await asyncio.to_thread(_write_blob_file, self._path(dg), raw)
            self._add_blob(dg, len(raw))
        self._media_types[dg] = media_type
        now = self._clock()
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO manifests (digest, media_type) VALUES (?, ?)",
                (dg, media_type),
            )
            if not _is_digest(reference):
                self._set_tag((upstream, repo, reference), dg, now)
        self.flush()
        self._evict()
        return dg

    def _set_tag(self, key: TagKey, digest: str, fetched_at: float) -> None:
        self._tags[key] = (digest, fetched_at)
        self._db.execute(
            "INSERT OR REPLACE INTO tags (upstream, repo, tag, digest, fetched_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (*key, digest, fetched_at),
        )

    async def get_manifest(self, digest: str) -> CachedManifest | None:
        """Return a cached manifest by digest (re-verified on read), or None."""
        media_type = self._media_types.get(digest)
        if media_type is None:
            return None
        self._pin(digest)
        try:
            raw = await asyncio.to_thread(_read_verified, self._path(digest), digest)
        finally:
            self._unpin(digest)
        if digest not in self._media_types:
            return None  # evicted meanwhile: the pin kept the file, not the index entry
        if raw is None:
            log.warning("proxy cache dropped a missing or corrupt manifest", digest=digest)
            self._forget([digest])
            return None
        self._touch(digest)
        return CachedManifest(digest, media_type, raw)

    def tag(self, upstream: str, repo: str, tag: str) -> TagEntry | None:
        """Return where a tag pointed when last fetched, stale entries included, or None."""
        entry = self._tags.get((upstream, repo, tag))
        if entry is None:
            return None
        dg, fetched_at = entry
        media_type = self._media_types.get(dg)
        if media_type is None:
            return None
        fresh = self._clock() - fetched_at < self.tag_ttl
        return TagEntry(dg, media_type, fetched_at, fresh)

    def touch_tag(self, upstream: str, repo: str, tag: str, digest: str) -> bool:
        """Record that the upstream's tag points at `digest` as of now.

        Returns False, changing nothing, when that manifest is not cached: the caller must
        then fetch it and `put_manifest()` it.
        """
        if digest not in self._media_types:
            return False
        with self._db:
            self._set_tag((upstream, repo, tag), digest, self._clock())
        return True

    def forget_tag(self, upstream: str, repo: str, tag: str) -> bool:
        """Drop a tag entry (its manifest stays); tell whether there was one."""
        if self._tags.pop((upstream, repo, tag), None) is None:
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
        self._touch(digest)
        return self._path(digest)

    def _open_cached(self, digest: str) -> BlobStream | None:
        """Open a cached blob's file as a pinned stream, counting a hit, or return None."""
        size = self._blobs.get(digest)
        if size is None:
            return None
        path = self._path(digest)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 -- closed by BlobStream.close
        except (FileNotFoundError, NotADirectoryError):
            log.warning("proxy cache dropped a blob whose file is gone", digest=digest)
            self._forget([digest])
            return None
        self._touch(digest)
        self._pin(digest)
        progress = _Progress(digest, path, size, done=True)
        return BlobStream(progress, _Handle(f), lambda: self._unpin(digest), cached=True)

    @asynccontextmanager
    async def open_blob(self, digest: str) -> AsyncIterator[BlobStream]:
        """Stream a cached blob, pinned against eviction meanwhile; NotFound if absent."""
        stream = self._open_cached(digest)
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
        stream = self._open_cached(digest)
        if stream is None:
            dl = self._downloads.get(digest) or self._start_download(digest, size, open_upstream)
            stream = self._follow(dl)
        try:
            await stream.wait_opened()
            yield stream
        finally:
            stream.close()

    def _follow(self, dl: _Download) -> BlobStream:
        """Open a pinned reader of a download's growing temporary file."""
        f = open(dl.path, "rb", buffering=0)  # noqa: SIM115 -- closed by BlobStream.close
        self._pin(dl.digest)
        return BlobStream(dl, _Handle(f), lambda: self._unpin(dl.digest), cached=False)

    def _start_download(
        self, digest: str, size: int | None, open_upstream: OpenUpstream
    ) -> _Download:
        final = self._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp, f = _open_temp(final.parent)
        dl = _Download(digest, tmp, f, size)
        self._downloads[digest] = dl
        task = asyncio.create_task(self._download(dl, open_upstream), name=f"fetch {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return dl

    async def _download(self, dl: _Download, open_upstream: OpenUpstream) -> None:
        """Fetch a blob once into its temporary file, verify it, and move it into place."""
        what = f"blob {dl.digest}"
        h = digests.hasher(dl.digest)
        total = 0
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
                pending = bytearray()
                async for chunk in chunks:
                    total += len(chunk)
                    if dl.size is not None and total > dl.size:
                        raise DigestMismatch(dl.digest, f"<more than {dl.size} bytes>", what)
                    pending += chunk
                    if len(pending) >= CHUNK_SIZE:
                        await dl.write(h, bytes(pending))
                        pending.clear()
                if pending:
                    await dl.write(h, bytes(pending))
            actual = f"{digests.algorithm(dl.digest)}:{h.hexdigest()}"
            if actual != dl.digest:
                raise DigestMismatch(dl.digest, actual, what)
            if dl.size is not None and total != dl.size:
                raise DigestMismatch(
                    dl.digest, f"{actual} ({total} bytes, expected {dl.size})", what
                )
            await dl.handle.run(_sync)
        except BaseException as e:
            self._fail(dl, e)
            if isinstance(e, Exception):
                log.info("proxy cache fetch failed", digest=dl.digest, error=str(e))
                return  # the readers have it; nobody awaits this task
            raise
        # No await from here on: a caller sees either the download or the stored blob.
        dl.handle.close()
        final = self._path(dl.digest)
        os.replace(dl.path, final)
        del self._downloads[dl.digest]
        self._add_blob(dl.digest, total)
        dl.size = total
        dl.available = total
        dl.done = True
        dl.notify()
        self._evict()
        await asyncio.to_thread(_fsync_dir, final.parent)

    def _fail(self, dl: _Download, error: BaseException) -> None:
        """End a download: readers get `error`, the temporary file goes, nothing is kept."""
        if self._downloads.get(dl.digest) is dl:
            del self._downloads[dl.digest]
        dl.handle.close()
        with contextlib.suppress(FileNotFoundError):
            dl.path.unlink()
        if isinstance(error, asyncio.CancelledError):
            error = OcimirrorError(f"fetch of {dl.digest} stopped: the proxy cache was closed")
        dl.error = error
        dl.notify()

    # -- lifetime -----------------------------------------------------------------------

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


__all__ = [
    "CHUNK_SIZE",
    "BlobStream",
    "CachedManifest",
    "OpenUpstream",
    "ProxyCache",
    "TagEntry",
    "UpstreamBlob",
]
