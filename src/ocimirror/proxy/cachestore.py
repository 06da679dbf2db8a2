"""Where the proxy cache keeps its bytes: a local directory, or an object store (obstore).

`LocalBlobs` keeps every blob (manifests included) as a file, `DIR/blobs/<alg>/<hex>`;
the SQLite index beside it is the only record of manifests' media types and of tags.

`ObjectBlobs` keeps them in a bucket (S3, R2, GCS, Azure, or obstore's `file://` and
`memory://`), laid out so that a proxy starting with an empty index, or several proxies
sharing the bucket, find everything again:

    <prefix>/blobs/<alg>/<hex>                blob and manifest bytes, content-addressed
    <prefix>/manifests/<alg>/<hex>            a manifest's media type (text)
    <prefix>/tags/<upstream>/<repo>/<tag>     the digest a tag pointed at when fetched (text)

An object is only written once its bytes were verified, so what is in the bucket is whole
and right. A tag object is written when the tag is first cached or moves, not at each
revalidation (the time of that lives in the local index). Downloads in progress are spooled
to a local directory, then put (multipart beyond 5 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import structlog

from .. import digest as digests
from ..atomicfile import TEMP_PREFIX, fsync_dir, write_atomic
from ..errors import DigestMismatch, OcimirrorError
from ..stores.obstores import brief, open_store

if TYPE_CHECKING:
    from obstore.store import ObjectStore

log = structlog.get_logger(__name__)

#: The bytes read per step of a blob read.
READ_CHUNK = 256 * 1024

#: The schemes that name an object store rather than a directory.
STORE_SCHEMES = (
    "s3://",
    "s3a://",
    "gs://",
    "az://",
    "azure://",
    "abfs://",
    "abfss://",
    "adl://",
    "file://",
    "memory://",
    "https://",
    "http://",
)

#: Parts of one multipart put in flight at a time (5 MiB each; obstore's default is 12, so
#: 60 MiB of memory per blob being put).
PUT_CONCURRENCY = 4

#: The prefix of a download in progress; a crash's leftovers are removed at start-up.
TMP_PREFIX = TEMP_PREFIX

TagKey = tuple[str, str, str]


def is_store_url(value: str) -> bool:
    """Tell whether a `--cache` value names an object store rather than a directory."""
    return value.lower().startswith(STORE_SCHEMES)


def _pread(f: BinaryIO, n: int, offset: int) -> bytes:
    return os.pread(f.fileno(), n, offset)


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def _clear_temps(directory: Path) -> None:
    """Remove the downloads a crash left in `directory`."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


class LocalBlobs:
    """Blobs as files under `DIR/blobs/<alg>/<hex>`, read with pread or sent with sendfile."""

    #: Blobs are local files: `commit()` is a rename, and `file()` gives a path.
    local = True

    def __init__(self, directory: Path) -> None:
        """Keep blobs under `directory/blobs`."""
        self.root = Path(directory) / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        """Name the place in logs."""
        return str(self.root.parent)

    def path(self, digest: str) -> Path:
        """Return where a blob's file is (or would be)."""
        return self.root / digests.algorithm(digest) / digests.encoded(digest)

    def file(self, digest: str) -> Path | None:
        """Return a blob's local file (whether or not it exists)."""
        return self.path(digest)

    def spool(self, digest: str) -> Path:
        """Return the directory a download of `digest` is written to (created)."""
        directory = self.path(digest).parent
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def scan(self) -> dict[str, tuple[int, float]]:
        """Return every blob kept, digest -> (size, mtime); remove a crash's temporary files."""
        found: dict[str, tuple[int, float]] = {}
        for alg_dir in self.root.iterdir():
            if not alg_dir.is_dir():
                continue
            _clear_temps(alg_dir)
            for entry in os.scandir(alg_dir):
                dg = f"{alg_dir.name}:{entry.name}"
                if digests.is_valid(dg) and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found[dg] = (st.st_size, st.st_mtime)
        return found

    async def write(self, digest: str, data: bytes, media_type: str | None = None) -> None:
        """Store a small blob (a manifest) whole."""
        await asyncio.to_thread(_write_file, self.path(digest), data)

    async def read(self, digest: str) -> bytes | None:
        """Return a small blob's bytes, or None when it is not there."""
        return await asyncio.to_thread(_read_file, self.path(digest))

    def commit(self, digest: str, tmp: Path) -> None:
        """Move a verified download into place (a rename: no await, so no one sees between)."""
        os.replace(tmp, self.path(digest))

    async def settle(self, digest: str) -> None:
        """Make a committed blob's directory entry durable."""
        await asyncio.to_thread(fsync_dir, self.path(digest).parent)

    def remove(self, digests_: list[str]) -> None:
        """Delete blobs (and what is kept about them)."""
        for dg in digests_:
            with contextlib.suppress(FileNotFoundError):
                self.path(dg).unlink()

    async def open_range(self, digest: str, first: int, last: int) -> AsyncGenerator[bytes]:
        """Open bytes `first`..`last` (inclusive) of a blob; FileNotFoundError if it is gone."""
        path = self.path(digest)
        f = await asyncio.to_thread(open, path, "rb", buffering=0)

        async def chunks() -> AsyncGenerator[bytes]:
            try:
                offset = first
                while offset <= last:
                    n = min(READ_CHUNK, last + 1 - offset)
                    data = await asyncio.to_thread(_pread, f, n, offset)
                    if not data:
                        raise OcimirrorError(f"{path}: shorter than {last + 1} bytes")
                    offset += len(data)
                    yield data
            finally:
                f.close()

        return chunks()

    async def lookup(self, digest: str) -> int | None:
        """Return the size of a blob put there by someone else (never, for a directory)."""
        return None

    async def media_type(self, digest: str) -> str | None:
        """Return a manifest's media type kept beside it (the index has it, for a directory)."""
        return None

    async def read_tag(self, key: TagKey) -> str | None:
        """Return the digest a tag was kept at (the index has it, for a directory)."""
        return None

    async def write_tag(self, key: TagKey, digest: str) -> None:
        """Keep where a tag points (the index does, for a directory)."""

    def remove_tag(self, key: TagKey) -> None:
        """Forget a tag (the index does, for a directory)."""

    async def drain(self) -> None:
        """Wait for work in the background (none, for a directory)."""


class ObjectBlobs:
    """Blobs, manifests' media types and tags in an object store; downloads spooled locally.

    Deletes run in the background; any later read or write of a key being deleted waits
    for the delete first, so an evicted object never comes back, nor a new one goes.
    """

    local = False

    def __init__(self, store: ObjectStore, spool: Path, *, name: str = "") -> None:
        """Keep objects in `store`; write downloads in progress to the directory `spool`."""
        self.store = store
        self.name = name or repr(store)
        self.spool_dir = Path(spool)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._deleting: dict[str, asyncio.Task[None]] = {}
        #: Requests sent to the store, and those that failed, by operation.
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def __str__(self) -> str:
        """Name the place in logs."""
        return self.name

    @staticmethod
    def key(digest: str, kind: str = "blobs") -> str:
        """Return the object key of a blob (or of a manifest's media type: `manifests`)."""
        return f"{kind}/{digests.algorithm(digest)}/{digests.encoded(digest)}"

    @staticmethod
    def tag_key(key: TagKey) -> str:
        """Return the object key of a tag."""
        upstream, repo, tag = key
        return f"tags/{upstream}/{repo}/{tag}"

    def file(self, digest: str) -> Path | None:
        """Return None: blobs are not local files."""
        return None

    def spool(self, digest: str) -> Path:
        """Return the local directory downloads are written to."""
        return self.spool_dir

    def scan(self) -> dict[str, tuple[int, float]]:
        """List every blob in the store, digest -> (size, mtime); clear the spool."""
        import obstore

        _clear_temps(self.spool_dir)
        found: dict[str, tuple[int, float]] = {}
        with self._errors("list", "list blobs/", reading=False):
            for batch in obstore.list(self.store, "blobs/", chunk_size=1000):
                for meta in batch:
                    alg, _, hexpart = meta["path"].removeprefix("blobs/").partition("/")
                    dg = f"{alg}:{hexpart}"
                    if digests.is_valid(dg):
                        found[dg] = (int(meta["size"]), meta["last_modified"].timestamp())
        return found

    # -- object I/O: every call waits for a pending delete of its key ------------------------

    @contextlib.contextmanager
    def _errors(self, op: str | None, action: str, *, reading: bool = True) -> Iterator[None]:
        """Count a request to the store (`op`: get, put, head, list, sign; None: not one) and
        turn its failures into one-line OcimirrorErrors; a read's missing object stays a
        FileNotFoundError (a write's is a failure: no bucket, say)."""
        if op is not None:
            self.requests[op] += 1
        try:
            yield
        except (OcimirrorError, GeneratorExit):
            raise
        except FileNotFoundError as e:
            if reading:
                raise
            self.failures[op or "get"] += 1
            raise OcimirrorError(f"cache store {self.name}: {action}: {brief(e)}") from e
        except Exception as e:
            self.failures[op or "get"] += 1
            raise OcimirrorError(f"cache store {self.name}: {action}: {brief(e)}") from e

    async def _settled(self, key: str) -> None:
        task = self._deleting.get(key)
        if task is not None:
            await asyncio.shield(task)

    async def _put(self, key: str, data: bytes | Path) -> None:
        import obstore

        await self._settled(key)
        with self._errors("put", f"write {key}", reading=False):
            await obstore.put_async(self.store, key, data, max_concurrency=PUT_CONCURRENCY)

    async def _get(self, key: str) -> bytes | None:
        import obstore

        await self._settled(key)
        try:
            with self._errors("get", f"read {key}"):
                got = await obstore.get_async(self.store, key)
                return bytes(await got.bytes_async())
        except FileNotFoundError:
            return None

    def _delete(self, keys: list[str]) -> None:
        """Delete objects in the background (at once, when no event loop runs)."""
        import obstore

        self.requests["delete"] += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                obstore.delete(self.store, keys)
            except Exception as e:
                self.failures["delete"] += 1
                log.warning("proxy cache store failed", store=self.name, error=brief(e))
            return

        before = {self._deleting[k] for k in keys if k in self._deleting}

        async def run() -> None:
            await asyncio.gather(*before, return_exceptions=True)
            try:
                await obstore.delete_async(self.store, keys)
            except Exception as e:
                self.failures["delete"] += 1
                log.warning("proxy cache store failed", store=self.name, error=brief(e))

        task = loop.create_task(run(), name=f"delete {keys[0]}")
        for k in keys:
            self._deleting[k] = task

        def done(_: asyncio.Task[None]) -> None:
            for k in keys:
                if self._deleting.get(k) is task:
                    del self._deleting[k]

        task.add_done_callback(done)

    # -- what the cache asks -----------------------------------------------------------------

    async def write(self, digest: str, data: bytes, media_type: str | None = None) -> None:
        """Store a small blob; a manifest's media type goes beside it."""
        await self._put(self.key(digest), data)
        if media_type is not None:
            await self._put(self.key(digest, "manifests"), media_type.encode())

    async def read(self, digest: str) -> bytes | None:
        """Return a small blob's bytes, or None when it is not there."""
        return await self._get(self.key(digest))

    async def put_file(self, digest: str, tmp: Path) -> None:
        """Put a verified download in the store (multipart beyond 5 MiB)."""
        await self._put(self.key(digest), tmp)

    async def settle(self, digest: str) -> None:
        """Nothing to make durable: a put is."""

    def remove(self, digests_: list[str]) -> None:
        """Delete blobs and their media types, in the background."""
        if digests_:
            keys = [self.key(dg) for dg in digests_]
            self._delete(keys + [self.key(dg, "manifests") for dg in digests_])

    async def open_range(self, digest: str, first: int, last: int) -> AsyncGenerator[bytes]:
        """Open bytes `first`..`last` (inclusive) of a blob; FileNotFoundError if it is gone.

        The whole blob is hashed on the way, its last chunk held back until it matches
        (DigestMismatch, an OcimirrorError, otherwise): a read damaged between the store and
        the proxy never reaches a client whole. A part of a blob cannot be checked."""
        import obstore

        key = self.key(digest)
        await self._settled(key)
        with self._errors("get", f"read {key}"):
            got = await obstore.get_async(self.store, key, options={"range": (first, last + 1)})
        want = last + 1 - first
        whole = first == 0 and want == int(got.meta["size"])

        async def chunks() -> AsyncGenerator[bytes]:
            seen = 0
            h = digests.hasher(digest) if whole else None
            held: bytes | None = None
            with self._errors(None, f"read {key}"):
                async for chunk in got.stream(min_chunk_size=READ_CHUNK):
                    seen += len(chunk)
                    if h is None:
                        yield bytes(chunk)
                        continue
                    if held is not None:
                        yield held
                    held = bytes(chunk)
                    h.update(held)
            if seen != want:
                raise OcimirrorError(f"cache store {self.name}: {key} gave {seen} of {want} bytes")
            if h is not None:
                actual = f"{digests.algorithm(digest)}:{h.hexdigest()}"
                if actual != digest:
                    raise DigestMismatch(digest, actual, f"blob read from cache store {self.name}")
                if held is not None:
                    yield held

        return chunks()

    async def presign(self, digest: str, lifetime: timedelta) -> str:
        """Return a URL that lets anyone GET a blob's object for `lifetime`."""
        import obstore
        from obstore.store import AzureStore, GCSStore, S3Store

        store = self.store
        if not isinstance(store, S3Store | GCSStore | AzureStore):
            raise NotImplementedError(f"cache store {self.name} cannot presign URLs")
        key = self.key(digest)
        with self._errors("sign", f"presign {key}", reading=False):
            url: str = await obstore.sign_async(store, "GET", key, lifetime)
        return url

    async def lookup(self, digest: str) -> int | None:
        """Return the size of a blob in the store (put by another proxy, say), or None."""
        import obstore

        key = self.key(digest)
        await self._settled(key)
        try:
            with self._errors("head", f"look up {key}"):
                meta = await obstore.head_async(self.store, key)
        except FileNotFoundError:
            return None
        return int(meta["size"])

    async def media_type(self, digest: str) -> str | None:
        """Return the media type kept beside a manifest, or None (not a manifest, or gone)."""
        raw = await self._get(self.key(digest, "manifests"))
        return (raw.decode(errors="replace").strip() or None) if raw is not None else None

    async def read_tag(self, key: TagKey) -> str | None:
        """Return the digest a tag was kept at, or None."""
        raw = await self._get(self.tag_key(key))
        return raw.decode(errors="replace").strip() if raw is not None else None

    async def write_tag(self, key: TagKey, digest: str) -> None:
        """Keep where a tag points."""
        await self._put(self.tag_key(key), digest.encode())

    def remove_tag(self, key: TagKey) -> None:
        """Forget a tag, in the background."""
        self._delete([self.tag_key(key)])

    async def drain(self) -> None:
        """Wait for background deletes."""
        while self._deleting:
            await asyncio.gather(*set(self._deleting.values()), return_exceptions=True)


def remove_tree(directory: Path) -> None:
    """Remove a temporary working directory and everything in it."""
    shutil.rmtree(directory, ignore_errors=True)


__all__ = ["LocalBlobs", "ObjectBlobs", "brief", "is_store_url", "open_store"]
