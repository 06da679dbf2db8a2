"""A blob's bytes as a stream, read from a file that may still be downloading.

A download (`Download`) writes an upstream blob to a temporary file and tells how much of
it may be read so far (`Progress`); every `BlobStream` on it reads from the start and waits
for more, so clients arriving mid-download get the same bytes. The file is used from
worker threads and closed only once no thread still uses it (`Handle`). A complete cached
blob is read the same way, or from an object store's chunks.

A download keeps its latest chunks in memory (`WINDOW` bytes once they are in the file,
plus those not yet stored, per download however many read it): a chunk is readable from
there as soon as it arrives (`Download.publish`), before its hash and file write in a
worker thread (`Download.store`); a reader that fell further behind reads the file.

No reader gets the whole of a blob before its digest is verified (`Download.publish`):
with a known size, every byte but the last is readable as soon as it arrives; without one
(any chunk may be the last), every chunk but the last arrived. So a reader of a blob whose
digest fails gets an error, never a complete-looking copy of wrong bytes.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ..errors import OcimirrorError

#: The largest chunk a blob stream yields, and how much is written per thread hop.
CHUNK_SIZE = 256 * 1024

#: The bytes of a download's latest chunks kept in memory for the readers keeping up.
WINDOW = 1024 * 1024

#: The most bytes a download lets readers have ahead of its file (published, not yet
#: hashed and stored): past it, it waits for the store in flight.
AHEAD = 4 * 1024 * 1024

_T = TypeVar("_T")


def write_hashed(f: BinaryIO, h: Any, chunks: list[bytes]) -> None:
    """Hash `chunks` and append them to `f`, in order."""
    for data in chunks:
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

    def recent(self, offset: int) -> bytes | None:
        """Return readable bytes from `offset` (up to `CHUNK_SIZE`) kept in memory, or None
        when they must be read from the file."""
        return None

    def on_disk(self) -> int:
        """Return how many readable bytes may be read from the file."""
        return self.available


class Download(Progress):
    """One upstream fetch in flight, written to a temporary file as it arrives."""

    def __init__(self, digest: str, tmp: Path, f: BinaryIO, size: int | None) -> None:
        super().__init__(digest, tmp, size, done=False)
        self.handle = Handle(f)
        #: Bytes published to readers, and bytes in the file (hashed), which may lag.
        self.received = 0
        self.written = 0
        self._window: deque[tuple[int, bytes]] = deque()  # (offset, chunk), oldest first
        self._window_bytes = 0

    def publish(self, data: bytes) -> None:
        """Keep `data` (the next bytes of the blob) in the window and let readers have all
        that arrived but the blob's last byte: with a known size, up to the end of `data`
        (short of the last byte), else up to its start. The rest is for `done`.

        Readers get it from memory before it is on disk: the file write and the hash run
        in a worker thread meanwhile (`store`), off the path to the clients. The window
        keeps every chunk not yet stored, so a reader never looks for it in the file."""
        before = self.received
        self.received += len(data)
        self._window.append((before, data))
        self._window_bytes += len(data)
        self._trim()
        readable = before if self.size is None else min(self.received, self.size - 1)
        if readable > self.available:
            self.available = readable
            self.notify()

    async def store(self, h: Any, chunks: list[bytes]) -> None:
        """Hash `chunks` and append them to the file (flushed), in one worker thread hop;
        stores go in the order the chunks were published, one at a time."""
        await self.handle.run(write_hashed, h, chunks)
        self.written += sum(len(c) for c in chunks)
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest chunks beyond `WINDOW` bytes, once they are in the file."""
        w = self._window
        while self._window_bytes > WINDOW and len(w) > 1 and w[0][0] + len(w[0][1]) <= self.written:
            self._window_bytes -= len(w.popleft()[1])

    def on_disk(self) -> int:
        """Return how many readable bytes may be read from the file."""
        return min(self.available, self.written)

    def recent(self, offset: int) -> bytes | None:
        """Return readable bytes from `offset` (up to `CHUNK_SIZE`) from the window, or None
        when they are no longer (or not) there."""
        end = self.available
        for start, data in reversed(self._window):
            if start <= offset:
                stop = min(start + len(data), end, offset + CHUNK_SIZE)
                if offset >= stop:
                    return None
                if offset == start and stop == start + len(data):
                    return data
                return data[offset - start : stop - start]
        return None

    def drop_window(self) -> None:
        """Let go of the chunks kept in memory (the download failed)."""
        self._window.clear()
        self._window_bytes = 0


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
                data = p.recent(self._offset)
                if data is not None:
                    self._offset += len(data)
                    return data
                n = min(CHUNK_SIZE, p.on_disk() - self._offset)
                if n <= 0:  # not in memory, not yet in the file: cannot happen (`_trim`)
                    await changed.wait()
                    continue
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
