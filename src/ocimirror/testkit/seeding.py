"""Fill a `LocalRegistry` with sample images, for tests, the demo and the benchmarks; reach
a registry with a store (`store_for`), or a client or a store closed afterwards (`connect`,
`open_store`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from ..auth.credentials import Credentials
from ..client import HostOptions, RegistryClient
from ..stores.registry import RegistryStore
from .images import Blob, SampleImage
from .registry import LocalRegistry

_CHUNK = 1024 * 1024


def store_for(registry: LocalRegistry) -> RegistryStore:
    """Return a RegistryStore for a local registry, logged in as its first user if any."""
    creds = registry.creds
    tls = getattr(registry, "tls", None)
    options = HostOptions(ca_file=str(tls.ca_cert) if tls is not None else None)
    credentials = Credentials(username=creds[0], password=creds[1]) if creds else None
    return RegistryStore(RegistryClient(registry.host, credentials=credentials, options=options))


@asynccontextmanager
async def connect(host: str, **kwargs: Any) -> AsyncIterator[RegistryClient]:
    """A RegistryClient for `host` (given `kwargs`), closed afterwards."""
    client = RegistryClient(host, **kwargs)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def open_store(host: str, **kwargs: Any) -> AsyncIterator[RegistryStore]:
    """A RegistryStore for `host` (its client given `kwargs`), closed afterwards."""
    store = RegistryStore(RegistryClient(host, **kwargs))
    try:
        yield store
    finally:
        await store.close()


async def seed(
    registry: LocalRegistry,
    repo: str,
    images: Iterable[tuple[str, SampleImage]],
    *,
    concurrency: int = 8,
) -> dict[str, str]:
    """Push tagged images into `repo`, `concurrency` at a time; return {tag: digest}.

    Images are drawn from `images` only as a slot frees up, so a generator of large
    images is never held in memory all at once. A blob shared by several images is
    uploaded once: distribution rewrites a blob's link on every upload, and a manifest
    PUT landing during a concurrent upload of one of its blobs is refused with
    MANIFEST_BLOB_UNKNOWN.
    """
    store = store_for(registry)
    sem = asyncio.Semaphore(concurrency)
    pushed: dict[str, str] = {}
    blobs: dict[str, asyncio.Task[None]] = {}

    async def put_blob(blob: Blob) -> None:
        if await store.blob_size(repo, blob.digest) is None:
            await store.put_blob(repo, blob.descriptor, _chunks(blob.data))

    async def one(tag: str, image: SampleImage) -> None:
        try:
            for blob in image.all_blobs():
                if blob.digest not in blobs:
                    blobs[blob.digest] = asyncio.ensure_future(put_blob(blob))
            await asyncio.gather(*(blobs[b.digest] for b in image.all_blobs()))
            for m in image.all_manifests()[:-1]:
                await store.put_manifest(repo, m.digest, m)
            await store.put_manifest(repo, tag, image.manifest)
        finally:
            sem.release()

    try:
        async with asyncio.TaskGroup() as tg:
            for tag, image in images:
                await sem.acquire()
                pushed[tag] = image.digest
                tg.create_task(one(tag, image))
                del image
    finally:
        for task in blobs.values():
            task.cancel()
        await store.close()
    return pushed


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for off in range(0, len(data), _CHUNK):
        yield data[off : off + _CHUNK]


def seed_sync(
    registry: LocalRegistry, repo: str, images: Iterable[tuple[str, SampleImage]]
) -> dict[str, str]:
    """Blocking form of `seed` for scripts outside an event loop."""
    return asyncio.run(seed(registry, repo, images))
