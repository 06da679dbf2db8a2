"""ProxyCache: the pull-through cache of `ocimirror proxy`, against an upstream we control.

Every test runs with the blobs in a directory and in three object stores through obstore:
in memory, `file://` and S3 (moto's server on loopback, a fresh bucket per test).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import obstore
import pytest

from ocimirror import digest as digests
from ocimirror import mediatypes as mt
from ocimirror.errors import (
    DigestMismatch,
    ManifestError,
    NotFound,
    OcimirrorError,
    RateLimited,
    ReferenceError,
    RegistryError,
)
from ocimirror.proxy import blobfetch, blobstream
from ocimirror.proxy.blobfetch import UpstreamBlob
from ocimirror.proxy.blobstream import CHUNK_SIZE, BlobStream
from ocimirror.proxy.cache import ProxyCache
from ocimirror.proxy.cacheindex import INDEX_NAME
from ocimirror.proxy.cachestore import ObjectBlobs, open_store
from ocimirror.testkit.s3 import LocalS3

MiB = 1024 * 1024
UPSTREAM = "registry-1.docker.io"

MANIFEST = (
    b'{"schemaVersion": 2,\n  "mediaType": "application/vnd.oci.image.manifest.v1+json",'
    b' "config": {}, "layers": []}  \n'
)
INDEX = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'


# --- helpers -----------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Upstream:
    """A fake upstream blob: counts how often it is opened, can pause, fail or lie."""

    def __init__(
        self,
        data: bytes,
        *,
        chunk: int = 64 * 1024,
        pause_at: int | None = None,
        fail_at: int | None = None,
        fail_on_open: Exception | None = None,
        declare_size: int | None = None,
    ) -> None:
        self.data = data
        self.chunk = chunk
        self.pause_at = pause_at
        self.fail_at = fail_at
        self.fail_on_open = fail_on_open
        self.declare_size = declare_size
        self.opens = 0
        self.sent = 0
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AsyncIterator[bytes] | UpstreamBlob]:
        self.opens += 1
        await asyncio.sleep(0)
        if self.fail_on_open is not None:
            raise self.fail_on_open
        if self.declare_size is None:
            yield self._chunks()
        else:
            yield UpstreamBlob(self._chunks(), self.declare_size)

    async def _chunks(self) -> AsyncIterator[bytes]:
        for off in range(0, len(self.data), self.chunk):
            if self.pause_at is not None and off >= self.pause_at and not self.resume.is_set():
                self.paused.set()
                await self.resume.wait()
            if self.fail_at is not None and off >= self.fail_at:
                raise RegistryError("upstream connection reset", status=502)
            piece = self.data[off : off + self.chunk]
            self.sent += len(piece)
            yield piece
            await asyncio.sleep(0)


def blob_of(size: int, seed: int = 0) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, digests.of(data)


async def hit(cache: ProxyCache, digest: str) -> None:
    """Read a cached blob (a hit, for the LRU order)."""
    async with cache.open_blob(digest) as stream:
        await read_all(stream)


async def read_all(stream: BlobStream) -> bytes:
    return b"".join([c async for c in stream])


async def fetch_all(cache: ProxyCache, digest: str, up: Upstream, size: int | None = None) -> bytes:
    """Fetch a blob through the cache, and wait until it is kept (put, with an object store)."""
    async with cache.fetch_blob(digest, size, up.open) as stream:
        data = await read_all(stream)
    await cache.idle()
    return data


async def check_stream(
    cache: ProxyCache,
    digest: str,
    up: Upstream,
    expected: bytes,
    on_chunk: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Fetch through the cache, comparing chunk by chunk (no 50 MiB copies); return bytes."""
    view = memoryview(expected)
    got = 0
    async with cache.fetch_blob(digest, len(expected), up.open) as stream:
        async for chunk in stream:
            assert len(chunk) <= CHUNK_SIZE
            assert view[got : got + len(chunk)] == chunk
            got += len(chunk)
            if on_chunk is not None:
                await on_chunk(got)
    await cache.idle()
    return got


class Place:
    """Where a test's caches keep their blobs: a directory, or one object store for all."""

    def __init__(self, kind: str, tmp_path: Path, s3: LocalS3 | None) -> None:
        self.kind = kind
        if kind == "dir":
            self.store = None
        elif kind == "memory":
            self.store = open_store("memory:///")
        elif kind == "file":
            self.store = open_store(f"file://{tmp_path / 'bucket'}")
        else:
            assert s3 is not None
            self.store = open_store(s3.url(s3.bucket(), "cache"), s3.options)

    async def stored(self, cache: ProxyCache) -> list[str]:
        """The hex names of the blobs kept, once background deletes are done."""
        await cache.idle()
        if self.store is None:
            return sorted(p.name for p in (cache.directory / "blobs").rglob("*") if p.is_file())
        listed = obstore.list(self.store, "blobs/").collect()
        return sorted(meta["path"].rsplit("/", 1)[1] for meta in listed)

    def spool(self, cache: ProxyCache) -> Path:
        """The directory downloads in progress are written to."""
        if self.store is None:
            return cache.directory / "blobs" / "sha256"
        return cache.directory / "spool"

    def overwrite(self, digest: str, data: bytes, cache: ProxyCache) -> None:
        """Change a kept blob's bytes behind the cache's back."""
        if self.store is None:
            path = cache.blob_path(digest)
            assert path is not None
            path.write_bytes(data)
        else:
            obstore.put(self.store, ObjectBlobs.key(digest), data)


@pytest.fixture(params=["dir", "memory", "file", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    s3 = request.getfixturevalue("s3") if request.param == "s3" else None
    return Place(request.param, tmp_path, s3)


@pytest.fixture
async def open_cache(tmp_path: Path, place: Place) -> AsyncIterator[Callable[..., ProxyCache]]:
    """Open ProxyCaches (on `tmp_path/cache` and `place` unless told); all closed at teardown."""
    opened: list[ProxyCache] = []

    def make(directory: Path | None = None, **kwargs: object) -> ProxyCache:
        kwargs.setdefault("store", place.store)
        cache = ProxyCache(directory or tmp_path / "cache", **kwargs)  # type: ignore[arg-type]
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        await cache.close()


# --- manifests and tags ------------------------------------------------------------------


async def test_manifest_round_trip_keeps_exact_bytes_and_media_type(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    cache = open_cache()
    dg = await cache.put_manifest(UPSTREAM, "library/alpine", "3.20", MANIFEST, mt.OCI_MANIFEST)
    assert dg == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    got = await cache.get_manifest(dg)
    assert got is not None
    assert (got.raw, got.media_type, got.digest, got.size) == (
        MANIFEST,
        mt.OCI_MANIFEST,
        dg,
        len(MANIFEST),
    )
    entry = await cache.tag(UPSTREAM, "library/alpine", "3.20")
    assert entry is not None
    assert (entry.digest, entry.media_type, entry.fresh) == (dg, mt.OCI_MANIFEST, True)
    # A manifest is a blob too, stored by digest.
    assert cache.has_blob(dg)
    assert cache.blob_size(dg) == len(MANIFEST)
    assert await place.stored(cache) == [digests.encoded(dg)]
    path = cache.blob_path(dg)
    if place.store is None:
        assert path == cache.directory / "blobs" / "sha256" / digests.encoded(dg)
        assert path.read_bytes() == MANIFEST
    else:
        assert path is None  # no local file to send
        assert bytes(obstore.get(place.store, ObjectBlobs.key(dg)).bytes()) == MANIFEST
    # Tags are per upstream and repository.
    assert await cache.tag("quay.io", "library/alpine", "3.20") is None
    assert await cache.tag(UPSTREAM, "library/busybox", "3.20") is None
    assert await cache.get_manifest(digests.of(b"other")) is None


async def test_manifest_by_digest_is_verified_and_records_no_tag(
    open_cache: Callable[..., ProxyCache],
) -> None:
    cache = open_cache()
    index_digest = digests.of(INDEX)
    assert await cache.put_manifest(UPSTREAM, "r", index_digest, INDEX, mt.OCI_INDEX) == (
        index_digest
    )
    got = await cache.get_manifest(index_digest)
    assert got is not None
    assert (got.raw, got.media_type) == (INDEX, mt.OCI_INDEX)
    assert await cache.tag(UPSTREAM, "r", index_digest) is None
    with pytest.raises(DigestMismatch):
        await cache.put_manifest(UPSTREAM, "r", digests.of(b"x"), MANIFEST, mt.OCI_MANIFEST)
    with pytest.raises(ReferenceError):
        await cache.put_manifest(UPSTREAM, "r", "sha256:nothex", MANIFEST, mt.OCI_MANIFEST)
    with pytest.raises(ManifestError):
        await cache.put_manifest(UPSTREAM, "r", "big", b" " * (4 * MiB + 1), mt.OCI_MANIFEST)
    assert not cache.has_blob(digests.of(MANIFEST))


async def test_corrupt_manifest_file_is_dropped_not_served(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    cache = open_cache()
    dg = await cache.put_manifest(UPSTREAM, "r", "t", MANIFEST, mt.OCI_MANIFEST)
    place.overwrite(dg, MANIFEST.replace(b"2", b"3"), cache)
    # A cache with an object store keeps manifests in memory too: read with a fresh index.
    again = cache if place.store is None else open_cache(cache.directory.parent / "again")
    assert await again.get_manifest(dg) is None
    assert not again.has_blob(dg)
    assert await again.tag(UPSTREAM, "r", "t") is None
    assert await place.stored(again) == []


async def test_tag_goes_stale_after_ttl_and_touch_revalidates(
    open_cache: Callable[..., ProxyCache],
) -> None:
    clock = Clock()
    cache = open_cache(tag_ttl=300.0, clock=clock)
    dg = await cache.put_manifest(UPSTREAM, "r", "latest", MANIFEST, mt.OCI_MANIFEST)
    start = clock.now
    clock.advance(299.9)
    entry = await cache.tag(UPSTREAM, "r", "latest")
    assert entry is not None
    assert entry.fresh
    assert entry.fetched_at == start
    clock.advance(0.1)
    entry = await cache.tag(UPSTREAM, "r", "latest")
    assert entry is not None
    assert not entry.fresh  # stale, still answered: stale-if-error is the server's call
    assert entry.digest == dg
    # A HEAD that matched: fresh again from now.
    assert await cache.touch_tag(UPSTREAM, "r", "latest", dg)
    entry = await cache.tag(UPSTREAM, "r", "latest")
    assert entry is not None
    assert entry.fresh
    assert entry.fetched_at == clock.now
    # A HEAD naming a manifest we do not have changes nothing: the server must GET it.
    clock.advance(1000)
    assert not await cache.touch_tag(UPSTREAM, "r", "latest", digests.of(b"unknown"))
    entry = await cache.tag(UPSTREAM, "r", "latest")
    assert entry is not None
    assert (entry.digest, entry.fresh) == (dg, False)
    # A HEAD naming another manifest we have moves the tag without a GET.
    other = await cache.put_manifest(UPSTREAM, "r", digests.of(INDEX), INDEX, mt.OCI_INDEX)
    assert await cache.touch_tag(UPSTREAM, "r", "latest", other)
    entry = await cache.tag(UPSTREAM, "r", "latest")
    assert entry is not None
    assert (entry.digest, entry.media_type, entry.fresh) == (other, mt.OCI_INDEX, True)
    # A new GET of the tag re-points it, and forget_tag drops it.
    clock.advance(1000)
    await cache.put_manifest(UPSTREAM, "r", "latest", MANIFEST, mt.OCI_MANIFEST)
    entry = await cache.tag(UPSTREAM, "r", "latest")
    assert entry is not None
    assert (entry.digest, entry.fresh) == (dg, True)
    assert cache.forget_tag(UPSTREAM, "r", "latest")
    assert not cache.forget_tag(UPSTREAM, "r", "latest")
    assert await cache.tag(UPSTREAM, "r", "latest") is None
    assert await cache.get_manifest(dg) is not None


async def test_restart_sees_manifests_tags_blobs_and_access_order(
    tmp_path: Path, open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    clock = Clock()
    cache = open_cache(clock=clock)
    dg = await cache.put_manifest(UPSTREAM, "r", "v1", MANIFEST, mt.OCI_MANIFEST)
    fetched_at = clock.now
    blobs = [blob_of(1000, seed) for seed in range(3)]
    for data, bdg in blobs:
        clock.advance(1)
        assert await fetch_all(cache, bdg, Upstream(data)) == data
    clock.advance(1)
    await hit(cache, blobs[0][1])  # the oldest blob is now the newest hit
    total = cache.total_bytes
    assert total == len(MANIFEST) + 3000
    await cache.close()
    # A crash's leftover download is cleaned up at the next start.
    leftover = place.spool(cache) / ".tmp-0123456789abcdef"
    leftover.write_bytes(b"partial")

    clock.advance(10)
    again = open_cache(clock=clock)
    assert not leftover.exists()
    assert again.total_bytes == total
    got = await again.get_manifest(dg)
    assert got is not None
    assert (got.raw, got.media_type) == (MANIFEST, mt.OCI_MANIFEST)
    entry = await again.tag(UPSTREAM, "r", "v1")
    assert entry is not None
    assert (entry.digest, entry.fetched_at, entry.fresh) == (dg, fetched_at, True)
    for data, bdg in blobs:
        clock.advance(1)
        assert again.blob_size(bdg) == len(data)
        up = Upstream(b"never used")
        assert await fetch_all(again, bdg, up) == data
        assert up.opens == 0
    await again.close()

    # The recorded access order survives: with room for one blob and the manifest, the
    # most recently used survive (reads above touched the manifest, then blobs 0, 1, 2).
    small = open_cache(max_bytes=len(MANIFEST) + 1000, clock=clock)
    assert [small.has_blob(b) for _, b in blobs] == [False, False, True]
    assert small.total_bytes == 1000
    assert await small.tag(UPSTREAM, "r", "v1") is None  # its manifest was the oldest


# --- single-flight blob fetches ----------------------------------------------------------


async def test_ten_concurrent_pulls_of_a_50_mib_blob_make_one_upstream_fetch(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    cache = open_cache()
    data, dg = blob_of(50 * MiB, seed=50)
    up = Upstream(data, chunk=1 * MiB, pause_at=25 * MiB)
    first_bytes = asyncio.Event()

    async def saw(_: int) -> None:
        first_bytes.set()

    pulls = [asyncio.create_task(check_stream(cache, dg, up, data, saw)) for _ in range(10)]
    await first_bytes.wait()
    await up.paused.wait()
    assert up.sent == 25 * MiB
    assert not cache.has_blob(dg)
    # An eleventh pull arriving mid-download gets everything from the start.
    late = asyncio.create_task(check_stream(cache, dg, up, data))
    await asyncio.sleep(0.01)
    up.resume.set()
    results = await asyncio.gather(*pulls, late)
    assert results == [len(data)] * 11
    assert up.opens == 1
    assert cache.has_blob(dg)
    assert cache.blob_size(dg) == len(data)
    # Now it is a plain cache hit.
    async with cache.fetch_blob(dg, None, up.open) as stream:
        assert stream.cached
        assert stream.size == len(data)
    assert up.opens == 1
    assert await place.stored(cache) == [digests.encoded(dg)]


async def test_failure_mid_stream_reaches_every_waiter_and_stores_nothing(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    cache = open_cache()
    data, dg = blob_of(2 * MiB, seed=1)
    broken = Upstream(data, fail_at=1 * MiB)
    results = await asyncio.gather(
        *(fetch_all(cache, dg, broken) for _ in range(4)), return_exceptions=True
    )
    assert broken.opens == 1
    assert all(isinstance(r, RegistryError) for r in results), results
    assert not cache.has_blob(dg)
    assert await place.stored(cache) == []
    assert cache.total_bytes == 0
    # The next fetch tries the upstream again.
    good = Upstream(data)
    assert await fetch_all(cache, dg, good) == data
    assert good.opens == 1
    assert cache.has_blob(dg)


async def test_upstream_refusal_is_raised_on_entering(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    cache = open_cache()
    data, dg = blob_of(1000)
    for error in (NotFound("blob unknown"), RateLimited("slow down", retry_after=5)):
        up = Upstream(data, fail_on_open=error)
        entered = False
        with pytest.raises(type(error)):
            async with cache.fetch_blob(dg, None, up.open):
                entered = True
        assert not entered
        assert up.opens == 1
    assert await place.stored(cache) == []
    with pytest.raises(ReferenceError):
        async with cache.fetch_blob("sha256:../../etc", None, Upstream(data).open):
            pass
    with pytest.raises(NotFound):
        async with cache.open_blob(dg):
            pass


async def test_digest_mismatch_withholds_the_end_and_stores_nothing(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    cache = open_cache()
    data, _ = blob_of(3 * MiB, seed=2)
    _, wrong = blob_of(3 * MiB, seed=3)
    up = Upstream(data)
    received = [0, 0]

    async def pull(i: int) -> None:
        async with cache.fetch_blob(wrong, None, up.open) as stream:
            async for chunk in stream:
                received[i] += len(chunk)

    results = await asyncio.gather(pull(0), pull(1), return_exceptions=True)
    assert all(isinstance(r, DigestMismatch) for r in results), results
    assert up.opens == 1
    # No reader got a complete copy of the wrong content.
    assert all(n < len(data) for n in received)
    assert not cache.has_blob(wrong)
    assert await place.stored(cache) == []


@pytest.mark.parametrize("how", ["declared", "asked"])
async def test_digest_mismatch_of_a_known_size_withholds_just_the_last_byte(
    open_cache: Callable[..., ProxyCache], place: Place, how: str
) -> None:
    """With the size known, readers get every byte as soon as it is written but the last
    one, which waits for the digest: wrong bytes never meet a client's Content-Length."""
    cache = open_cache()
    data, _ = blob_of(3 * MiB, seed=2)  # whole chunks: each is written as it arrives
    _, wrong = blob_of(3 * MiB, seed=3)
    readers = 3
    received = [0] * readers
    caught_up = asyncio.Event()
    opens = 0

    @asynccontextmanager
    async def opener() -> AsyncIterator[UpstreamBlob | AsyncIterator[bytes]]:
        nonlocal opens
        opens += 1

        async def chunks() -> AsyncIterator[bytes]:
            for off in range(0, len(data), CHUNK_SIZE):
                yield data[off : off + CHUNK_SIZE]
            # The upstream ends once every reader has all it may have before the digest
            # check (a hang guard, not a timing assertion: lagging readers time it out).
            await asyncio.wait_for(caught_up.wait(), timeout=60)

        yield UpstreamBlob(chunks(), len(data)) if how == "declared" else chunks()

    async def pull(i: int) -> None:
        async with cache.fetch_blob(wrong, len(data) if how == "asked" else None, opener) as s:
            assert s.size == len(data)
            async for chunk in s:
                received[i] += len(chunk)
                if min(received) >= len(data) - 1:
                    caught_up.set()

    results = await asyncio.gather(*(pull(i) for i in range(readers)), return_exceptions=True)
    assert all(isinstance(r, DigestMismatch) for r in results), results
    assert opens == 1
    assert received == [len(data) - 1] * readers
    assert not cache.has_blob(wrong)
    assert await place.stored(cache) == []
    assert cache.total_bytes == 0
    assert list(place.spool(cache).glob(".tmp-*")) == []


async def test_readers_keeping_up_get_chunks_from_memory_and_late_ones_from_the_file(
    open_cache: Callable[..., ProxyCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader at the head of a download is not a chunk behind the writer and reads
    nothing back from the file; one that joins later reads the file until it catches up,
    because only the last `WINDOW` bytes stay in memory once stored (`AHEAD` at one chunk
    here: each store waits for the one before, so everything but the last chunk is
    stored when the upstream pauses)."""
    monkeypatch.setattr(blobfetch, "AHEAD", CHUNK_SIZE)
    preads: list[int] = []
    pread = blobstream.pread

    def counting_pread(f: BinaryIO, n: int, offset: int) -> bytes:
        preads.append(offset)
        return pread(f, n, offset)

    monkeypatch.setattr(blobstream, "pread", counting_pread)
    cache = open_cache()
    data, dg = blob_of(3 * MiB, seed=11)
    up = Upstream(data, chunk=CHUNK_SIZE, pause_at=2 * MiB, declare_size=len(data))
    assert 2 * MiB > blobstream.WINDOW
    async with cache.fetch_blob(dg, None, up.open) as leader:
        got = bytearray()
        while len(got) < 2 * MiB:  # all the upstream sent before pausing, no more
            # A hang guard, not a timing assertion: a reader a chunk behind waits forever.
            got += await asyncio.wait_for(anext(leader), timeout=5)
        # The reader may get the bytes before the download asks the upstream for more.
        await asyncio.wait_for(up.paused.wait(), timeout=5)  # a hang guard, as above
        assert bytes(got) == data[: 2 * MiB]
        assert preads == []
        async with cache.fetch_blob(dg, None, up.open) as late:
            first = await anext(late)
            assert first == data[: len(first)]
            assert preads == [0]  # the start is no longer in memory
            up.resume.set()
            rest = await asyncio.gather(read_all(leader), read_all(late))
    assert bytes(got) + rest[0] == data
    assert first + rest[1] == data
    assert up.opens == 1


async def test_readers_get_chunks_while_the_store_is_behind(
    open_cache: Callable[..., ProxyCache], place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk reaches the readers as it arrives, before it is hashed and in the file: with
    the first store held in its worker thread, a reader still gets the bytes published
    (up to `AHEAD` ahead of the file, short of the last byte). Once the store goes on, the
    blob is whole, verified and kept; the upstream is asked once."""
    held = threading.Event()
    entered = threading.Event()
    write_hashed = blobstream.write_hashed

    def held_write(f: BinaryIO, h: object, chunks: list[bytes]) -> None:
        entered.set()
        held.wait()
        write_hashed(f, h, chunks)

    monkeypatch.setattr(blobstream, "write_hashed", held_write)
    cache = open_cache()
    data, dg = blob_of(6 * MiB, seed=12)
    up = Upstream(data, chunk=CHUNK_SIZE, declare_size=len(data))
    assert len(data) > blobstream.AHEAD > 2 * CHUNK_SIZE
    try:
        async with cache.fetch_blob(dg, None, up.open) as stream:
            got = bytearray()
            while len(got) < 2 * CHUNK_SIZE:
                # A hang guard, not a timing assertion: readers waiting on the store hang.
                got += await asyncio.wait_for(anext(stream), timeout=5)
            assert entered.is_set()  # the first store is in its thread, held
            assert not cache.has_blob(dg)
            held.set()
            got += await read_all(stream)
    finally:
        held.set()
    assert bytes(got) == data
    await cache.idle()
    assert cache.has_blob(dg)
    assert up.opens == 1
    assert await fetch_all(cache, dg, Upstream(b"")) == data  # from the cache, not upstream


async def test_size_is_enforced(open_cache: Callable[..., ProxyCache], place: Place) -> None:
    cache = open_cache()
    data, dg = blob_of(100_000, seed=4)
    with pytest.raises(DigestMismatch):
        await fetch_all(cache, dg, Upstream(data), size=len(data) - 1)
    with pytest.raises(DigestMismatch):
        await fetch_all(cache, dg, Upstream(data), size=len(data) + 1)
    with pytest.raises(DigestMismatch):  # the upstream's Content-Length disagrees
        await fetch_all(cache, dg, Upstream(data, declare_size=len(data) + 1), size=len(data))
    assert await place.stored(cache) == []
    # A size learnt from the upstream is shown to every reader.
    up = Upstream(data, declare_size=len(data))
    async with cache.fetch_blob(dg, None, up.open) as stream:
        assert stream.size == len(data)
        assert not stream.cached
        assert await read_all(stream) == data


async def test_a_cancelled_waiter_does_not_break_the_others(
    open_cache: Callable[..., ProxyCache],
) -> None:
    cache = open_cache()
    data, dg = blob_of(4 * MiB, seed=5)
    up = Upstream(data, pause_at=2 * MiB)
    got_some = asyncio.Event()

    async def leader() -> None:
        async with cache.fetch_blob(dg, None, up.open) as stream:
            async for _ in stream:
                got_some.set()
                await asyncio.Event().wait()  # a client that stalls and is dropped

    first = asyncio.create_task(leader())  # this one started the upstream fetch
    await got_some.wait()
    others = [asyncio.create_task(check_stream(cache, dg, up, data)) for _ in range(3)]
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    up.resume.set()
    assert await asyncio.gather(*others) == [len(data)] * 3
    assert up.opens == 1
    assert cache.has_blob(dg)


async def test_download_finishes_in_background_when_every_waiter_left(
    open_cache: Callable[..., ProxyCache],
) -> None:
    cache = open_cache()
    data, dg = blob_of(2 * MiB, seed=6)
    up = Upstream(data, pause_at=1 * MiB)

    async def pull_then_leave() -> None:
        async with cache.fetch_blob(dg, None, up.open):
            await asyncio.Event().wait()

    waiters = [asyncio.create_task(pull_then_leave()) for _ in range(2)]
    await up.paused.wait()
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    up.resume.set()
    for _ in range(100):
        if cache.has_blob(dg):
            break
        await asyncio.sleep(0.01)
    assert cache.has_blob(dg)
    assert await fetch_all(cache, dg, up) == data
    assert up.opens == 1


async def test_close_stops_downloads_and_their_readers_get_an_error(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    cache = open_cache()
    data, dg = blob_of(2 * MiB, seed=7)
    up = Upstream(data, pause_at=1 * MiB)
    pull = asyncio.create_task(fetch_all(cache, dg, up))
    await up.paused.wait()
    await cache.close()
    with pytest.raises(Exception, match="closed"):
        await pull
    assert await place.stored(cache) == []


# --- size limit ----------------------------------------------------------------------------


async def test_lru_eviction_keeps_recently_used_blobs(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    clock = Clock()
    cache = open_cache(max_bytes=3000, clock=clock)
    blobs = [blob_of(1000, seed) for seed in range(10, 14)]
    a, b, c, d = (dg for _, dg in blobs)
    for data, dg in blobs[:3]:
        clock.advance(1)
        await fetch_all(cache, dg, Upstream(data))
    assert cache.total_bytes == 3000
    clock.advance(1)
    await hit(cache, a)  # a hit protects the oldest
    clock.advance(1)
    await fetch_all(cache, d, Upstream(blobs[3][0]))
    assert [cache.has_blob(x) for x in (a, b, c, d)] == [True, False, True, True]
    assert cache.total_bytes == 3000
    assert digests.encoded(b) not in await place.stored(cache)
    assert len(await place.stored(cache)) == 3
    # has_blob and blob_size are not hits: c is now the least recently used.
    assert cache.has_blob(c)
    assert cache.blob_size(c) == 1000
    clock.advance(1)
    await fetch_all(cache, b, Upstream(blobs[1][0]))
    assert [cache.has_blob(x) for x in (a, b, c, d)] == [True, True, False, True]


async def test_a_blob_being_streamed_is_not_evicted(
    open_cache: Callable[..., ProxyCache],
) -> None:
    clock = Clock()
    cache = open_cache(max_bytes=2000, clock=clock)
    blobs = [blob_of(1000, seed) for seed in range(20, 23)]
    for data, dg in blobs[:2]:
        clock.advance(1)
        await fetch_all(cache, dg, Upstream(data))
    clock.advance(1)
    async with cache.open_blob(blobs[0][1]) as stream:
        clock.advance(1)
        await hit(cache, blobs[1][1])  # now blobs[0] is the least recently used...
        clock.advance(1)
        await fetch_all(cache, blobs[2][1], Upstream(blobs[2][0]))
        assert cache.has_blob(blobs[0][1])  # ...but it is being read
        assert not cache.has_blob(blobs[1][1])
        assert cache.total_bytes == 2000
        assert await read_all(stream) == blobs[0][0]


async def test_pinned_blobs_over_the_limit_are_evicted_once_released(
    open_cache: Callable[..., ProxyCache],
) -> None:
    clock = Clock()
    cache = open_cache(max_bytes=1000, clock=clock)
    (old, old_dg), (new, new_dg) = blob_of(1000, 30), blob_of(1000, 31)
    await fetch_all(cache, old_dg, Upstream(old))
    async with cache.fetch_blob(new_dg, None, Upstream(new).open) as new_stream:
        async with cache.open_blob(old_dg) as old_stream:
            clock.advance(1)
            assert await read_all(new_stream) == new
            await cache.idle()  # an object store has it once it is put
            assert cache.total_bytes == 2000  # over the limit: both are being read
            assert await read_all(old_stream) == old
        assert not cache.has_blob(old_dg)  # released while `new` is still read: it goes
        assert cache.total_bytes == 1000
    assert cache.has_blob(new_dg)


async def test_a_tag_goes_when_its_manifest_is_evicted(
    tmp_path: Path, open_cache: Callable[..., ProxyCache]
) -> None:
    clock = Clock()
    cache = open_cache(max_bytes=len(MANIFEST) + len(INDEX) + 1000, clock=clock)
    dg = await cache.put_manifest(UPSTREAM, "r", "old", MANIFEST, mt.OCI_MANIFEST)
    clock.advance(1)
    kept = await cache.put_manifest(UPSTREAM, "r", "new", INDEX, mt.OCI_INDEX)
    clock.advance(1)
    data, bdg = blob_of(1000, seed=40)
    await fetch_all(cache, bdg, Upstream(data))
    assert await cache.tag(UPSTREAM, "r", "old") is not None
    clock.advance(1)
    data2, bdg2 = blob_of(len(MANIFEST) - 10, seed=41)  # only the oldest must go
    await fetch_all(cache, bdg2, Upstream(data2))
    assert await cache.tag(UPSTREAM, "r", "old") is None
    assert await cache.get_manifest(dg) is None
    assert await cache.tag(UPSTREAM, "r", "new") is not None
    await cache.close()
    again = open_cache(clock=clock)
    assert await again.tag(UPSTREAM, "r", "old") is None
    entry = await again.tag(UPSTREAM, "r", "new")
    assert entry is not None
    assert entry.digest == kept
    assert (tmp_path / "cache" / INDEX_NAME).is_file()


# --- many clients at once -----------------------------------------------------------------


async def test_random_concurrent_use_under_a_size_limit_keeps_the_books_straight(
    open_cache: Callable[..., ProxyCache], place: Place
) -> None:
    """Fetches, hits, ranges, manifests and evictions interleaved: every answer is right,
    and afterwards what the cache counts is what the place holds."""
    rng = random.Random(7)
    blobs = [blob_of(rng.choice((3_000, 40_000, 300_000)), seed=100 + i) for i in range(12)]
    sizes = {dg: len(data) for data, dg in blobs}
    limit = 700_000  # about half of it all: evictions all along
    cache = open_cache(max_bytes=limit)
    manifests = [MANIFEST, INDEX]

    async def client(n: int) -> None:
        local = random.Random(n * 1000 + 7)
        for _ in range(25):
            data, dg = local.choice(blobs)
            op = local.random()
            if op < 0.6:
                assert await fetch_all(cache, dg, Upstream(data)) == data
            elif op < 0.8:
                first = local.randrange(len(data))
                last = min(len(data) - 1, first + local.randrange(50_000))
                try:
                    async with cache.open_range(dg, first, last) as chunks:
                        assert b"".join([c async for c in chunks]) == data[first : last + 1]
                except NotFound:
                    pass  # not cached (or evicted) just now
            else:
                raw = local.choice(manifests)
                got = await cache.put_manifest(UPSTREAM, "r", f"t{n}", raw, mt.OCI_MANIFEST)
                cached = await cache.get_manifest(got)
                assert cached is None or cached.raw == raw  # evicted at once, maybe
            await asyncio.sleep(0)

    await asyncio.gather(*(client(n) for n in range(8)))
    await cache.idle()
    held = [dg for dg in sizes if cache.has_blob(dg)]
    held += [digests.of(m) for m in manifests if cache.has_blob(digests.of(m))]
    assert cache.total_bytes <= limit
    expected = sum(sizes.get(dg, 0) for dg in held) + sum(
        len(m) for m in manifests if digests.of(m) in held
    )
    assert cache.total_bytes == expected
    assert sorted(await place.stored(cache)) == sorted(digests.encoded(dg) for dg in held)


# --- object stores -------------------------------------------------------------------------


@pytest.fixture(params=["memory", "s3"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """An object store only (memory and S3)."""
    s3 = request.getfixturevalue("s3") if request.param == "s3" else None
    return Place(request.param, tmp_path, s3)


async def test_a_cache_sharing_the_store_finds_blobs_manifests_and_tags(
    tmp_path: Path, bucket: Place
) -> None:
    clock = Clock()
    first = ProxyCache(tmp_path / "a", store=bucket.store, clock=clock)
    other = ProxyCache(None, store=bucket.store, clock=clock)  # empty index, opened already
    try:
        dg = await first.put_manifest(UPSTREAM, "r", "v1", MANIFEST, mt.OCI_MANIFEST)
        data, bdg = blob_of(300 * 1024, seed=50)
        await fetch_all(first, bdg, Upstream(data))
        assert not other.has_blob(bdg)
        assert await other.discover(bdg)
        assert other.blob_size(bdg) == len(data)
        never = Upstream(b"never used")
        assert await fetch_all(other, bdg, never) == data
        assert never.opens == 0
        async with other.open_range(bdg, 1000, 1999) as chunks:
            assert b"".join([c async for c in chunks]) == data[1000:2000]
        # A tag found in the store is stale: served only once a HEAD upstream agrees.
        entry = await other.tag(UPSTREAM, "r", "v1")
        assert entry is not None
        assert (entry.digest, entry.media_type, entry.fresh) == (dg, mt.OCI_MANIFEST, False)
        got = await other.get_manifest(dg)
        assert got is not None
        assert (got.raw, got.media_type) == (MANIFEST, mt.OCI_MANIFEST)
        assert await other.touch_tag(UPSTREAM, "r", "v1", dg)
        entry = await other.tag(UPSTREAM, "r", "v1")
        assert entry is not None
        assert entry.fresh
        assert await other.tag(UPSTREAM, "r", "v2") is None
        assert not await other.discover(digests.of(b"nowhere"))
        # Twenty askers of a tag the index does not know share one lookup in the store.
        third = ProxyCache(None, store=bucket.store, clock=clock)
        try:
            entries = await asyncio.gather(*(third.tag(UPSTREAM, "r", "v1") for _ in range(20)))
            assert {e.digest if e else None for e in entries} == {dg}
            counts = third.store_requests()
            assert counts is not None
            assert counts[0]["get"] == 3  # the tag, the manifest's media type, its bytes
        finally:
            await third.close()
    finally:
        await first.close()
        await other.close()
    assert not other.directory.exists()  # the temporary index went with it


async def test_eviction_deletes_the_objects_and_tags_of_a_manifest(
    tmp_path: Path, bucket: Place
) -> None:
    assert bucket.store is not None
    clock = Clock()
    cache = ProxyCache(tmp_path / "c", store=bucket.store, max_bytes=len(MANIFEST), clock=clock)
    try:
        await cache.put_manifest(UPSTREAM, "r", "t", MANIFEST, mt.OCI_MANIFEST)
        keys = sorted(m["path"] for m in obstore.list(bucket.store).collect())
        assert keys == [
            ObjectBlobs.key(digests.of(MANIFEST)),
            ObjectBlobs.key(digests.of(MANIFEST), "manifests"),
            f"tags/{UPSTREAM}/r/t",
        ]
        clock.advance(1)
        data, bdg = blob_of(len(MANIFEST), seed=51)
        await fetch_all(cache, bdg, Upstream(data))
        await cache.idle()
        assert [m["path"] for m in obstore.list(bucket.store).collect()] == [ObjectBlobs.key(bdg)]
        # Put again right after an eviction: the pending delete goes first, then the put.
        await cache.put_manifest(UPSTREAM, "r", "t", MANIFEST, mt.OCI_MANIFEST)
        await cache.idle()
        again = ProxyCache(None, store=bucket.store)
        try:
            entry = await again.tag(UPSTREAM, "r", "t")
            assert entry is not None
            assert entry.digest == digests.of(MANIFEST)
        finally:
            await again.close()
    finally:
        await cache.close()


async def test_a_failing_store_still_serves_from_upstream_and_keeps_nothing(
    tmp_path: Path, s3: LocalS3, caplog: pytest.LogCaptureFixture
) -> None:
    name = s3.bucket()
    store = open_store(s3.url(name, "cache"), s3.options)
    cache = ProxyCache(tmp_path / "c", store=store)
    try:
        s3.delete_bucket(name)  # every put and get fails from now on
        data, dg = blob_of(6 * MiB, seed=52)
        up = Upstream(data)
        assert await fetch_all(cache, dg, up) == data
        assert not cache.has_blob(dg)
        assert list((tmp_path / "c" / "spool").iterdir()) == []
        assert await fetch_all(cache, dg, up) == data
        assert up.opens == 2
        with pytest.raises(OcimirrorError, match=r"cache store .*write blobs/sha256/"):
            await cache.put_manifest(UPSTREAM, "r", "t", MANIFEST, mt.OCI_MANIFEST)
        assert await cache.get_manifest(digests.of(MANIFEST)) is None
        assert await cache.tag(UPSTREAM, "r", "t") is None
        counts = cache.store_requests()
        assert counts is not None
        requests, failures = counts
        assert failures["put"] == requests["put"] == 3  # two blobs, one manifest
        assert failures["list"] == 0
    finally:
        await cache.close()


def test_a_store_that_cannot_be_listed_is_named_at_start(tmp_path: Path, s3: LocalS3) -> None:
    store = open_store(s3.url("no-such-bucket"), s3.options)
    with pytest.raises(OcimirrorError, match=r"cache store .*list blobs/"):
        ProxyCache(tmp_path / "c", store=store, store_name="s3://no-such-bucket")
