"""The `ocimirror` command (console script and `python -m ocimirror`).

`ocimirror version` is answered here, before the command line (typer, which builds
pydantic validators for its options) is imported: it prints what the `version` command
of `ocimirror.cli` prints, in a tenth of the time. Everything else, `version --help`
included, goes to `ocimirror.cli`.

Once the command has finished (its event loop closed, its stores, databases and servers
closed, its output written), the process ends with `os._exit` after flushing stdout and
stderr, skipping the interpreter's finalization. Native threads outlive the command
(obstore's tokio runtime). Tearing the interpreter down under them
aborted the process now and then (SIGABRT with no Python frame, 2 runs in 1,200 of
`copy … s3://` on a loaded machine) after a copy that had succeeded, turning exit
status 0 into -6. Nothing the command owns is left to finalization: files, databases and
temporary directories are closed by the code that opened them. An exception other than
`SystemExit` (a traceback, Ctrl-C) ends the process the usual way.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

from . import version_line


def _exit_now(code: int) -> None:
    """Collect garbage (an object left unclosed still warns, as asyncio's `Unclosed client
    session`), flush what the command wrote, and end the process without finalization."""
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to write
            stream.flush()
    os._exit(code)


def _status(exit: SystemExit) -> int:
    """The exit status `sys.exit(code)` would give: None is 0, a message is 1."""
    code = exit.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main() -> None:
    """Run the command line."""
    if sys.argv[1:] == ["version"]:
        print(version_line())
        return
    from .cli import main as cli_main

    try:
        cli_main()
    except SystemExit as e:
        _exit_now(_status(e))
    _exit_now(0)


if __name__ == "__main__":
    main()
