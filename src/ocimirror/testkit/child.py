"""A test server run as a child process on loopback, its output in a log read for requests.

`LoggedChild` is what moto's S3 server (`s3.LocalS3`) and the cloud emulators
(`emulators.LocalAzurite`, `emulators.LocalGCS`) share: a free port, a private work
directory (the child's working directory, holding `server.log`), `start()` that waits until
the port answers HTTP, `answered()` and `requests()` that read the requests the server
logged (each, or counted by method), and `stop()` that ends the child and removes its
files. A subclass names its command.
`http_answers` is the liveness check other servers use too: any HTTP answer, even an error
status, means the server is up.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import IO, Self

from .lifecycle import StartStop, await_child, terminate
from .registry import free_port

#: An access-log line's method, path and status: `"GET /path HTTP/1.1" 200`, in plain logs
#: and in JSON ones (where the closing quote is escaped).
_LOG_LINE = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[\d.]+\\?" (\d{3})')


def http_answers(url: str) -> bool:
    """Tell whether `url` answers HTTP at all (an error status counts: the server is up)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class LoggedChild(StartStop):
    """A server run as a child process, its output in a log file read for requests."""

    #: What the server is, in errors.
    what = "server"
    #: How its work directory's name starts.
    prefix = "server"

    def __init__(self) -> None:
        """Pick a port; nothing runs until `start()`."""
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._names = itertools.count(1)

    def _command(self, workdir: Path) -> list[str]:
        """The command that runs the server in `workdir`, on 127.0.0.1 at `self.port`."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start the server and wait until it answers."""
        self._dir = tempfile.TemporaryDirectory(prefix=f"{self.prefix}-")
        workdir = Path(self._dir.name)
        self._log_path = log_path = workdir / "server.log"
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed by stop()
        self._proc = subprocess.Popen(
            self._command(workdir), stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir
        )
        await_child(
            self._proc,
            lambda: http_answers(f"http://127.0.0.1:{self.port}/"),
            self.what,
            lambda: log_path.read_text(errors="replace")[-2000:],
            self.stop,
            timeout=60,
        )
        return self

    def answered(self) -> list[tuple[str, str, int]]:
        """Return the requests the server logged so far: (method, path and query, status)."""
        if self._log_path is None:
            return []
        text = self._log_path.read_text(errors="replace")
        return [(m.group(1), m.group(2), int(m.group(3))) for m in _LOG_LINE.finditer(text)]

    def requests(self) -> Counter[str]:
        """Count the requests the server logged so far, by method."""
        return Counter(method for method, _, _ in self.answered())

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.cleanup()
            self._dir = None
        self._log_path = None
