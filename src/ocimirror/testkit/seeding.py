"""Fill a `LocalRegistry` with sample images, for tests, the demo and the benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ..auth.credentials import Credentials
from ..client import HostOptions, RegistryClient
from ..stores.registry import RegistryStore
from .images import SampleImage, push
from .registry import LocalRegistry


def store_for(registry: LocalRegistry) -> RegistryStore:
    """Return a RegistryStore for a local registry, logged in as its first user if any."""
    creds = registry.creds
    tls = getattr(registry, "tls", None)
    options = HostOptions(ca_file=str(tls.ca_cert) if tls is not None else None)
    credentials = Credentials(username=creds[0], password=creds[1]) if creds else None
    return RegistryStore(RegistryClient(registry.host, credentials=credentials, options=options))


async def seed(
    registry: LocalRegistry,
    repo: str,
    images: Iterable[tuple[str, SampleImage]],
    *,
    concurrency: int = 8,
) -> dict[str, str]:
    """Push tagged images into `repo`, `concurrency` at a time; return {tag: digest}.

    Images are drawn from `images` only as a slot frees up, so a generator of large
    images is never held in memory all at once.
    """
    store = store_for(registry)
    sem = asyncio.Semaphore(concurrency)
    pushed: dict[str, str] = {}

    async def one(tag: str, image: SampleImage) -> None:
        try:
            await push(store, repo, image, tag)
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
        await store.close()
    return pushed


def seed_sync(
    registry: LocalRegistry, repo: str, images: Iterable[tuple[str, SampleImage]]
) -> dict[str, str]:
    """Blocking form of `seed` for scripts outside an event loop."""
    return asyncio.run(seed(registry, repo, images))
