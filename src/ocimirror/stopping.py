"""Run a command's coroutine so that SIGTERM and SIGINT stop it cleanly, not abruptly.

`run_stoppable(main)` is `asyncio.run(main)` with SIGTERM and SIGINT turned into a
cancellation of `main`: its `finally` blocks and `except CancelledError` handlers run
(transfers are cancelled and awaited, a sync pass records its run as interrupted, stores
close), then `Stopped` is raised, whose `exit_code` is the shell's 128 + the signal's
number (143 for SIGTERM, 130 for SIGINT). Without this, SIGTERM ends Python at once and a
sync pass would leave its run "running" in the state database. A tag is always written
last, so nothing half-copied is ever tagged either way.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: The signals that stop a one-shot command cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Raised by `run_stoppable` when a signal stopped the command before it finished."""

    def __init__(self, signum: int) -> None:
        """Remember the signal."""
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} before it finished")

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a command a signal ended."""
        return 128 + self.signum


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end, or until SIGTERM / SIGINT cancels it (then raise `Stopped`)."""
    stopped: list[int] = []

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            stopped.append(signum)
            task.cancel()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    try:
        result = asyncio.run(guarded())
    except asyncio.CancelledError:
        if stopped:
            raise Stopped(stopped[0]) from None
        raise
    if stopped:  # `main` swallowed the cancellation: what it returned is not the whole
        raise Stopped(stopped[0])
    return result


__all__ = ["STOP_SIGNALS", "Stopped", "run_stoppable"]
