"""A blob's bytes as a stream, read from a file that may still be downloading.

A download (`Download`) writes an upstream blob to a temporary file and tells how much of
it may be read so far (`Progress`); every `BlobStream` on it reads from the start and waits
for more, so clients arriving mid-download get the same bytes. The file is used from
worker threads and closed only once no thread still uses it (`Handle`). A complete cached
blob is read the same way, or from an object store's chunks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ..errors import OcimirrorError

#: The largest chunk a blob stream yields, and how much is written per thread hop.
CHUNK_SIZE = 256 * 1024

_T = TypeVar("_T")


def write_hashed(f: BinaryIO, h: Any, data: bytes) -> None:
    """Hash `data` and append it to `f`."""
    h.update(data)
    f.write(data)
    f.flush()


def sync_file(f: BinaryIO) -> None:
    """Flush `f` to the disk."""
    f.flush()
    os.fsync(f.fileno())


def pread(f: BinaryIO, n: int, offset: int) -> bytes:
    """Read up to `n` bytes of `f` at `offset`."""
    return os.pread(f.fileno(), n, offset)


def close_later(chunks: AsyncGenerator[bytes]) -> None:
    """Close an async generator from synchronous code (its cleanup runs in a task)."""
    task = asyncio.get_running_loop().create_task(chunks.aclose())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Task[None]] = set()


class Handle:
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


class Progress:
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


class Download(Progress):
    """One upstream fetch in flight, written to a temporary file as it arrives."""

    def __init__(self, digest: str, tmp: Path, f: BinaryIO, size: int | None) -> None:
        super().__init__(digest, tmp, size, done=False)
        self.handle = Handle(f)
        self.written = 0

    async def write(self, h: Any, data: bytes) -> None:
        """Append and hash `data`, then let readers have everything up to its start."""
        before = self.written
        await self.handle.run(write_hashed, h, data)
        self.written += len(data)
        if before > self.available:
            self.available = before
            self.notify()


class BlobStream:
    """A blob's bytes from its start, as an async iterator of chunks of up to 256 KiB."""

    def __init__(
        self,
        progress: Progress,
        handle: Handle | None,
        release: Callable[[], None],
        *,
        cached: bool,
        chunks: AsyncGenerator[bytes] | None = None,
    ) -> None:
        """Read `progress`'s file through `handle` (or take `chunks`, a cached blob from an
        object store); `release` runs once, at `close()`."""
        self.digest = progress.digest
        #: True when served from a complete copy, False when following a download.
        self.cached = cached
        self._progress = progress
        self._handle = handle
        self._chunks = chunks
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
        if self._chunks is not None:
            return await anext(self._chunks)
        p = self._progress
        assert self._handle is not None
        while True:
            changed = p.changed()
            if p.error is not None:
                raise p.error
            if self._offset < p.available:
                n = min(CHUNK_SIZE, p.available - self._offset)
                data = await self._handle.run(pread, n, self._offset)
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
            if self._handle is not None:
                self._handle.close()
            if self._chunks is not None:
                close_later(self._chunks)
            release()
