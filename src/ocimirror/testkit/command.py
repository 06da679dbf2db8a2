"""Run the `ocimirror` command in a child process, as a user would (tests, demo, bench)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def ocimirror_command(*args: str) -> list[str]:
    """Return the command line that runs `ocimirror ARGS` with this interpreter."""
    return [sys.executable, "-m", "ocimirror", *args]


def run_ocimirror(
    *args: str,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run `ocimirror ARGS`; output captured as text unless `capture` is False."""
    return subprocess.run(
        ocimirror_command(*args),
        capture_output=capture,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=timeout,
        check=False,
    )
