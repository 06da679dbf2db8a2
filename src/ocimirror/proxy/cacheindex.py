"""The pull-through cache's index: what is cached, how big, when last used, and eviction.

`CacheIndex` is the state `ProxyCache` (`cache`) runs on: the sizes of the blobs held
(manifests included), in least-recently-used order, with a running total; manifests'
media types; tags and when they were fetched; the pins of blobs being read or written;
with an object store, the most recent manifests' bytes in memory. It keeps these in
`index.sqlite` inside the cache directory beside the blobs (`cachestore`) and evicts the
least recently used unpinned blobs while the total is over `max_bytes`.

The blobs are the truth. The index row of a manifest is written after its blob and
removed before it, so a crash at worst leaves a blob the index does not call a manifest,
which is simply fetched again. At startup the blobs are listed once for sizes (rows
naming a missing blob are dropped); from then on the running total is kept.

The access times that order eviction are updated on every hit in memory and written to
the index lazily (every `FLUSH_EVERY` hits or `FLUSH_INTERVAL` seconds, with any other
index write, and at `close()`); a blob without a recorded time counts from its file's
mtime (its object's last change). One process, one event loop per cache directory;
several proxies may share an object store, each evicting by what it knows.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path

import structlog

from .cachefull import FullDisk
from .cachestore import LocalBlobs, ObjectBlobs, TagKey

log = structlog.get_logger(__name__)

#: The name of the index database inside the cache directory.
INDEX_NAME = "index.sqlite"

#: With an object store, manifests' bytes kept in memory at most (the most recently used).
MANIFEST_MEMORY = 32 * 1024 * 1024

#: Access times are written to the index after this many unsaved hits...
FLUSH_EVERY = 1000

#: ...or when the oldest unsaved hit is this many seconds old.
FLUSH_INTERVAL = 60.0

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


class CacheIndex:
    """The cache's index and LRU: sizes, media types, tags, access times, pins; eviction."""

    def __init__(
        self,
        directory: Path,
        place: LocalBlobs | ObjectBlobs,
        *,
        max_bytes: int | None,
        clock: Callable[[], float],
    ) -> None:
        """Open (creating if needed) the index in `directory` of the blobs in `place`; the
        blobs are listed once for sizes, and evicted down to `max_bytes`."""
        self.directory = directory
        self._place = place
        self.max_bytes = max_bytes
        self._clock = clock
        self._blobs: OrderedDict[str, int] = OrderedDict()  # digest -> size, oldest first
        self._atimes: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._media_types: dict[str, str] = {}
        self._tags: dict[TagKey, tuple[str, float]] = {}
        self._pins: dict[str, int] = {}
        self._raw: OrderedDict[str, bytes] = OrderedDict()
        self._raw_bytes = 0
        self._total = 0
        self._closed = False
        self.disk = FullDisk(str(self._place))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.directory / INDEX_NAME, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._load()
        self._last_flush = clock()
        self._evict()

    # -- startup ------------------------------------------------------------------------

    def _load(self) -> None:
        """List the blobs, then read the index, dropping rows for missing blobs."""
        found = self._place.scan()
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

    def store_requests(self) -> tuple[Counter[str], Counter[str]] | None:
        """Return the requests sent to the object store and those that failed, by operation
        (None: the blobs are in a directory)."""
        if isinstance(self._place, ObjectBlobs):
            return self._place.requests, self._place.failures
        return None

    @property
    def place(self) -> str:
        """Name where the blobs are kept (a directory or an object store)."""
        return str(self._place)

    @property
    def total_bytes(self) -> int:
        """Return the bytes held in blobs (manifests included)."""
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
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO access (digest, atime) VALUES (?, ?)", rows
                )
        except sqlite3.Error as e:
            if not self.disk.noted(e):
                raise
            return  # kept in memory, written at a later flush
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
            raw = self._raw.pop(dg, None)
            self._raw_bytes -= len(raw) if raw is not None else 0
        for key in keys:
            self._place.remove_tag(key)
        self._place.remove(victims)

    def _delete_rows(self, digests_: list[str]) -> None:
        """Delete every index row about these digests (tags pointing at them included)."""
        rows = [(dg,) for dg in digests_]
        with self._db:
            self._db.executemany("DELETE FROM tags WHERE digest = ?", rows)
            self._db.executemany("DELETE FROM manifests WHERE digest = ?", rows)
            self._db.executemany("DELETE FROM access WHERE digest = ?", rows)

    def _note_manifest(self, digest: str, media_type: str) -> None:
        """Record that a blob is a manifest of this media type (within a transaction)."""
        self._media_types[digest] = media_type
        self._db.execute(
            "INSERT OR REPLACE INTO manifests (digest, media_type) VALUES (?, ?)",
            (digest, media_type),
        )

    def _keep_raw(self, digest: str, raw: bytes) -> None:
        """With an object store, keep a manifest's bytes in memory (the most recent ones)."""
        if self._place.local:
            return
        self._raw.pop(digest, None)
        self._raw[digest] = raw
        self._raw_bytes += len(raw)
        while self._raw_bytes > MANIFEST_MEMORY:
            _, old = self._raw.popitem(last=False)
            self._raw_bytes -= len(old)

    def _set_tag(self, key: TagKey, digest: str, fetched_at: float) -> None:
        self._tags[key] = (digest, fetched_at)
        self._db.execute(
            "INSERT OR REPLACE INTO tags (upstream, repo, tag, digest, fetched_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (*key, digest, fetched_at),
        )


__all__ = ["FLUSH_EVERY", "FLUSH_INTERVAL", "INDEX_NAME", "MANIFEST_MEMORY", "CacheIndex"]
