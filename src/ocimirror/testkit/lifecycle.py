"""`with server:` for the testkit's servers: started on entry, stopped on exit."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from .polling import wait_for


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM a child process and wait for it; SIGKILL it after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def await_child(
    proc: subprocess.Popen[Any],
    alive: Callable[[], bool],
    what: str,
    log: Callable[[], str],
    stop: Callable[[], None],
    timeout: float,
) -> None:
    """Wait until a child server answers (`alive()`); if it exits first, fail with its
    `log()`. On any failure `stop()` cleans up before the error goes on."""
    try:
        wait_for(lambda: alive() or proc.poll() is not None, f"{what} to answer", timeout)
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log()}")
    except BaseException:
        stop()
        raise


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
