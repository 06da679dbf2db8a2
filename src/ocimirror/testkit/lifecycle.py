"""`with server:` for the testkit's servers: started on entry, stopped on exit."""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Any, Self


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM a child process and wait for it; SIGKILL it after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class StartStop:
    """A server with `start()` and `stop()`, usable as a context manager."""

    def start(self) -> Self:
        """Start the server and return it."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
