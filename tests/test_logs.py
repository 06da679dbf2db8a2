"""Logging setup: where lines go and in which form (each case in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, structlog
from ocimirror.logs import configure
configure(fmt=sys.argv[1], level="info", color=sys.argv[2], output=sys.argv[3])
structlog.get_logger("t").info("hello", n=1)
structlog.get_logger("t").debug("hidden")
"""


def run(fmt: str, color: str, output: str) -> subprocess.CompletedProcess[str]:
    """Configure logging in a fresh interpreter and log one info and one debug line."""
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt, color, output],
        capture_output=True,
        text=True,
        check=True,
    )


def test_json_lines_appended_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "ocimirror.log"
    log.write_text("earlier line\n")
    out = run("json", "auto", str(log))
    assert out.stderr == ""
    assert out.stdout == ""
    first, second = log.read_text().splitlines()
    assert first == "earlier line"
    doc = json.loads(second)
    assert doc["event"] == "hello"
    assert doc["n"] == 1
    assert doc["level"] == "info"


def test_text_to_stdout_with_colour_forced_or_not() -> None:
    coloured = run("text", "always", "stdout")
    assert "hello" in coloured.stdout
    assert "\x1b[" in coloured.stdout
    assert coloured.stderr == ""
    plain = run("text", "never", "stderr")
    assert "hello" in plain.stderr
    assert "\x1b[" not in plain.stderr
    assert "hidden" not in plain.stderr
