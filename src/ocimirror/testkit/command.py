"""Run the `ocimirror` command in a child process, as a user would (tests, demo, bench)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from signal import SIGTERM

from . import secrets as scanned_secrets
from .polling import wait_for


def ocimirror_command(*args: str) -> list[str]:
    """Return the command line that runs `ocimirror ARGS` with this interpreter."""
    return [sys.executable, "-m", "ocimirror", *args]


def run_ocimirror(
    *args: str,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run `ocimirror ARGS`; output captured as text unless `capture` is False (what
    it said is scanned for the suite's secrets, `secrets.scan`)."""
    done = subprocess.run(
        ocimirror_command(*args),
        capture_output=capture,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=timeout,
        check=False,
    )
    if capture:
        where = f"`ocimirror {args[0] if args else ''}`"
        scanned_secrets.scan(done.stdout or "", f"{where} stdout")
        scanned_secrets.scan(done.stderr or "", f"{where} stderr")
    return done


async def ocimirror_async(
    *args: str,
    env: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> tuple[int, str, str]:
    """Run `ocimirror ARGS` from a coroutine (the event loop's servers keep answering);
    return its exit code, stdout and stderr (scanned as `run_ocimirror` scans them). The
    environment is `base` (default: this process's) with `COLUMNS=200` and `env`;
    `preexec` runs in the child before it starts."""
    proc = await asyncio.create_subprocess_exec(
        *ocimirror_command(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**(os.environ if base is None else base), "COLUMNS": "200", **(env or {})},
        preexec_fn=preexec,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    where = f"`ocimirror {args[0] if args else ''}`"
    scanned_secrets.scan(out.decode(errors="replace"), f"{where} stdout")
    scanned_secrets.scan(err.decode(errors="replace"), f"{where} stderr")
    return proc.returncode, out.decode(), err.decode()


class Background:
    """`ocimirror ARGS` running in the background, its output appended to a log file."""

    def __init__(self, args: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        """Start it (`env`: the whole environment; None: this process's)."""
        self.log = log
        self.command = args[0] if args else ""
        self._out = log.open("a")
        self.proc = subprocess.Popen(
            ocimirror_command(*args),
            stdout=self._out,
            stderr=self._out,
            env=None if env is None else dict(env),
        )

    def text(self) -> str:
        """Everything it logged so far."""
        return self.log.read_text()

    def _scan_log(self) -> None:
        """Scan the whole log for the suite's secrets, once, when the process is gone."""
        if not getattr(self, "_scanned", False):
            self._scanned = True
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            scanned_secrets.scan(text, f"the log of `ocimirror {self.command}`")

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Wait until `ready()` holds (an OSError counts as not yet); fail with the log if
        the process exits first or `timeout` passes."""

        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{what} exited with {self.proc.returncode}:\n{self.text()}")
            try:
                return ready()
            except OSError:
                return False

        try:
            wait_for(check, f"{what} to be ready", timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}:\n{self.text()}") from None

    def signal(self, sig: int) -> None:
        """Send a signal (if it still runs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()
            if self.proc.poll() is not None:
                self._scan_log()

    def stop(self, sig: int = SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit code; SIGKILL after `timeout` (the code says so)."""
        self.signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._out.close()
            self._scan_log()

    def kill(self) -> None:
        """Make sure it is gone, at once."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._scan_log()
