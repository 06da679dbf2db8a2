"""Counting the requests a `LocalRegistry` (`registry`) answered, from its logs.

The registry writes an access log line (Combined Log Format) for every request, whatever
its status; `parse_access_log()` turns the lines into `Request(method, path, status, ...)`,
whose `kind` (`manifest`, `blob`, `upload`, `tags`...) comes from the path.

The registry writes a line *after* its response, so a client may already hold a large
blob whose line is not written yet (a naive read misses about half of them).
`RequestLog.sync()` waits until the log holds every request a client has seen answered:
exactly, from the registry's debug log ("authorizing request" as each request starts),
or, without it, by a marker request's line (under `SYNC_PREFIX`, never reported) and a
moment of quiet.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: The path prefix of the marker requests `requests()` sends; they are never reported.
SYNC_PREFIX = "/ocimirror-testkit-sync/"

_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]*)\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-)(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
)

_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("base", re.compile(r"^/v2/?$")),
    ("catalog", re.compile(r"^/v2/_catalog$")),
    ("upload", re.compile(r"^/v2/(?P<name>.+?)/blobs/uploads/(?P<ref>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+?)/blobs/(?P<ref>[^/]+)$")),
    ("manifest", re.compile(r"^/v2/(?P<name>.+?)/manifests/(?P<ref>[^/]+)$")),
    ("tags", re.compile(r"^/v2/(?P<name>.+?)/tags/list$")),
    ("referrers", re.compile(r"^/v2/(?P<name>.+?)/referrers/(?P<ref>[^/]+)$")),
)


@dataclass(frozen=True)
class Request:
    """One request a registry answered, from its access log."""

    method: str
    path: str
    status: int
    query: str = ""
    size: int = 0
    user_agent: str = ""

    def _route(self) -> tuple[str, re.Match[str] | None]:
        for kind, pattern in _ROUTES:
            match = pattern.match(self.path)
            if match:
                return kind, match
        return "other", None

    @property
    def kind(self) -> str:
        """What was asked for: base, catalog, manifest, blob, upload, tags, referrers, other."""
        return self._route()[0]

    @property
    def repository(self) -> str | None:
        """The repository name in the path, if any."""
        match = self._route()[1]
        return match.groupdict().get("name") if match else None

    @property
    def reference(self) -> str | None:
        """The tag or digest (manifests), digest (blobs) or session id (uploads)."""
        match = self._route()[1]
        return match.groupdict().get("ref") if match else None

    def __str__(self) -> str:
        """Show it as `METHOD /path?query STATUS`."""
        query = f"?{self.query}" if self.query else ""
        return f"{self.method} {self.path}{query} {self.status}"


def parse_access_log(text: str) -> list[Request]:
    """Parse Combined Log Format lines into requests; other lines and markers are skipped."""
    found: list[Request] = []
    for line in text.splitlines():
        match = _ACCESS_LINE.match(line)
        if not match:
            continue
        path, _, query = match["uri"].partition("?")
        if path.startswith(SYNC_PREFIX):
            continue
        size = match["size"]
        found.append(
            Request(
                method=match["method"],
                path=path,
                status=int(match["status"]),
                query=query,
                size=0 if size == "-" else int(size),
                user_agent=match["agent"] or "",
            )
        )
    return found


def file_size(path: Path) -> int:
    """Return the size of a file, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
    """Return the complete lines of `path` from `offset`, and the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), offset + end


class RequestLog:
    """A registry's access log (and its debug log, for exact counting), read as requests."""

    def __init__(self, access_log: Path, log_path: Path) -> None:
        """Read `access_log` (Combined Log Format) and `log_path` (the registry's JSON log)."""
        self.access_log = access_log
        self.log_path = log_path
        self._sync_ids = itertools.count()
        # Exact counting: requests (method, uri) started minus completed since the launch,
        # and how far each log has been read.
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._access_read = 0
        self._log_read = 0

    def launched(self, log_mark: int) -> None:
        """Count from here: the registry starts with nothing in flight (its JSON log read
        from `log_mark`)."""
        self._in_flight.clear()
        self._access_read, self._log_read = file_size(self.access_log), log_mark

    def sync(self, *, exact: bool, settle: float, probe: Callable[[str], object]) -> None:
        """Wait until the access log holds every request a client has seen answered.

        The registry writes a request's access log line just after the response, so a
        client can see a response (a large blob download above all) a moment before its
        line exists. With `exact` counting the registry logs "authorizing request" (debug)
        as each request starts, before any response: every request a client has seen
        answered has started, and this waits until every started request has its access
        log line (at most 5 s, for other clients still busy). Without it, a marker request
        is sent (`probe(path)`) and its line awaited, then the log must stay unchanged for
        `settle` s.
        """
        if exact:
            deadline = time.monotonic() + 5.0
            while self._catch_up():
                if time.monotonic() > deadline:  # never wait twice for the same ones
                    self._in_flight = Counter({k: n for k, n in self._in_flight.items() if n < 0})
                    return
                time.sleep(0.001)
            return
        marker = f"{SYNC_PREFIX}{os.getpid()}-{next(self._sync_ids)}".encode()
        try:
            probe(marker.decode())
        except (OSError, http.client.HTTPException):
            return
        deadline = time.monotonic() + 5.0
        while not self._log_holds(marker + b" "):
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        size, deadline = file_size(self.access_log), time.monotonic() + 0.5
        while time.monotonic() < deadline:
            time.sleep(settle)
            grown = file_size(self.access_log)
            if grown == size:
                return
            size = grown

    def _catch_up(self) -> bool:
        """Read both logs further; return whether some started request has no line yet."""
        lines, self._access_read = _read_lines(self.access_log, self._access_read)
        for line in lines:
            match = _ACCESS_LINE.match(line.decode("utf-8", "replace"))
            if match:
                self._in_flight[(match["method"], match["uri"])] -= 1
        lines, self._log_read = _read_lines(self.log_path, self._log_read)
        for line in lines:
            if b'"authorizing request"' not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                method, uri = entry.get("http.request.method"), entry.get("http.request.uri")
                if isinstance(method, str) and isinstance(uri, str):
                    self._in_flight[(method, uri)] += 1
        return any(n > 0 for n in self._in_flight.values())

    def _log_holds(self, needle: bytes) -> bool:
        with self.access_log.open("rb") as f:
            f.seek(max(0, file_size(self.access_log) - 64 * 1024))
            return needle in f.read()

    def read(self, start: int) -> list[Request]:
        """Return the requests of the complete lines from offset `start` on (no sync)."""
        try:
            with self.access_log.open("rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        return parse_access_log(complete.decode("utf-8", "replace"))


__all__ = [
    "SYNC_PREFIX",
    "Request",
    "RequestLog",
    "file_size",
    "parse_access_log",
]
