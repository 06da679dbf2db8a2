"""A cache whose disk is full stands aside for a while.

When a write into the cache fails for want of space (`ENOSPC`, `EFBIG` past a file size
limit, `EDQUOT`, or SQLite's "database or disk is full" / "disk I/O error" for its
index), the proxy logs one line naming the cache and goes on answering: blobs not yet
cached are streamed from the upstream (hashed on the way, as without a cache) for
`PAUSE` seconds, after which the cache is tried again; what is cached is still served
from it. A download that fails that way leaves no file behind (its temporary file goes),
so nothing partial is ever kept.
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Callable

import structlog

__all__ = ["PAUSE", "FullDisk", "is_disk_full"]

log = structlog.get_logger("ocimirror.proxy")

#: Seconds the cache stands aside after a write failed for want of space.
PAUSE = 5.0
_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def is_disk_full(e: BaseException) -> bool:
    """Tell whether a write failed for want of space (a file, or the SQLite index)."""
    if isinstance(e, OSError):
        return e.errno in _FULL
    if isinstance(e, sqlite3.Error):
        text = str(e).lower()
        return "disk is full" in text or "disk i/o error" in text
    return False


class FullDisk:
    """Whether the cache at `place` is standing aside, and since when it last failed."""

    def __init__(self, place: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.place = place
        self.clock = clock
        self.until = float("-inf")
        self.episodes = 0

    @property
    def full(self) -> bool:
        """True while the cache stands aside."""
        return self.clock() < self.until

    def noted(self, e: BaseException) -> bool:
        """Note a failed write; True when it was for want of space (logged once per episode)."""
        if not is_disk_full(e):
            return False
        if not self.full:
            self.episodes += 1
            log.warning(
                "proxy cache is full: serving from the upstream uncached for a while;"
                " free space at the cache",
                cache=self.place,
                error=str(e) or type(e).__name__,
                retry_in=PAUSE,
            )
        self.until = self.clock() + PAUSE
        return True
