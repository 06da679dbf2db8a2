"""Atomic file writes: a temporary file in the same directory, synced, then renamed in.

A reader never sees half a file, and a write that fails (or a process that dies) leaves
no file under the final name, only a temporary one whose name starts with `TEMP_PREFIX`
so start-up code can find and remove it. The OCI layout store and the proxy's disk cache
both write this way.

    write_atomic(path, data)                  a small file in one go
    tmp, f = open_temp(directory)             a stream: write to `f`, then
    commit_temp(f, tmp, final)                ... move it into place, or
    discard_temp(f, tmp)                      ... throw it away

These are blocking calls: async code runs them with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO

#: How every temporary file's name starts (`.tmp-` and 16 hex digits).
TEMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the platform allows."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_temp(directory: Path) -> tuple[Path, BinaryIO]:
    """Create a fresh temporary file in `directory` (mode 0644 less the umask) for writing.

    Return its path and an open binary file; the name is never one that already exists.
    """
    while True:
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, "wb")


def commit_temp(f: BinaryIO, tmp: Path, final: Path) -> None:
    """Sync and close a temporary file from `open_temp`, then rename it to `final`."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, final)
    fsync_dir(final.parent)


def discard_temp(f: BinaryIO, tmp: Path) -> None:
    """Close a temporary file from `open_temp` and remove it."""
    f.close()
    tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a synced temporary file and a rename.

    The directory must exist. On any error the temporary file is removed and `path` keeps
    its old content (or stays absent).
    """
    tmp, f = open_temp(path.parent)
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


__all__ = ["TEMP_PREFIX", "commit_temp", "discard_temp", "fsync_dir", "open_temp", "write_atomic"]
