"""One upstream fetch of a blob for the pull-through cache: streamed to readers, stored, verified.

`fetch_verified()` is the body of `ProxyCache`'s single-flight download (`cache`): it
opens the upstream blob, hands each chunk to the download's readers as it arrives
(`blobstream.Download.publish`), writes and hashes it into the temporary file in a worker
thread meanwhile, and checks the digest and size at the end. It keeps no state of its
own: the cache decides what a failure or a verified file becomes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from .. import digest as digests
from ..errors import DigestMismatch
from .blobstream import AHEAD, CHUNK_SIZE, Download, sync_file


@dataclass(frozen=True)
class UpstreamBlob:
    """An opened upstream blob: its chunks and, when the response said, its size."""

    chunks: AsyncIterable[bytes]
    size: int | None = None


#: Opens the upstream blob; entering raises for a failed request (404, 429, ...).
OpenUpstream = Callable[[], AbstractAsyncContextManager[AsyncIterable[bytes] | UpstreamBlob]]


def _retrieved(fut: asyncio.Future[None]) -> None:
    """Retrieve a dropped future's exception, so that it is not logged as unhandled."""
    if not fut.cancelled():
        fut.exception()


def _joined(parts: list[bytes]) -> bytes:
    """Return the chunks as one `bytes`, without a copy when there is one."""
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def fetch_verified(dl: Download, open_upstream: OpenUpstream) -> int:
    """Fetch a blob once into its download's temporary file, publishing each chunk to its
    readers, and verify it; return its size.

    Raises the upstream's error, or DigestMismatch; the caller then ends the download.
    The file is synced, not closed.
    """
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
            raise DigestMismatch(dl.digest, f"{actual} ({total} bytes, expected {dl.size})", what)
        await dl.handle.run(sync_file)
    except BaseException:
        if writing is not None:
            writing.cancel()  # the thread finishes; the handle closes after it
            writing.add_done_callback(_retrieved)
        raise
    return total


__all__ = ["OpenUpstream", "UpstreamBlob", "fetch_verified"]
