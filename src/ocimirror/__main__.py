"""The `ocimirror` command (console script and `python -m ocimirror`).

`ocimirror version` is answered here, before the command line (typer, which builds
pydantic validators for its options) is imported: it prints what the `version` command
of `ocimirror.cli` prints, in a tenth of the time. Everything else, `version --help`
included, goes to `ocimirror.cli`.
"""

from __future__ import annotations

import sys

from . import version_line


def main() -> None:
    """Run the command line."""
    if sys.argv[1:] == ["version"]:
        print(version_line())
        return
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
