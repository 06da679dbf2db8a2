"""`ocimirror docker-mirror [-v] -d DEST IMAGE…`: area51 docker-mirror's command line.

`-d docker.example.com/mirror hello-world area51/jenkins` copies
docker.io/library/hello-world:latest to docker.example.com/mirror/library/hello-world:latest
and area51/jenkins:latest under the same prefix, every platform with its digests kept (the
`mirror` command does the work). docker-mirror itself keeps only the Linux entries of an
index and so pushes a new index; `--linux-only` does that too, and keeps the index (and
its digest) as it is when it holds nothing else.
"""

from __future__ import annotations

from typing import Annotated

import typer


def docker_mirror(
    images: Annotated[
        list[str], typer.Argument(help="Images to mirror (hello-world, area51/jenkins).")
    ],
    destination: Annotated[
        str,
        typer.Option("-d", help="Destination repository: REGISTRY\\[/PATH].", metavar="DEST"),
    ],
    verbose: Annotated[bool, typer.Option("-v", help="Verbosity: log every request.")] = False,
    linux_only: Annotated[
        bool,
        typer.Option(
            "--linux-only",
            help="As docker-mirror: only the Linux platforms of an index (a new index when"
            " others are dropped; the same digest when there were none).",
        ),
    ] = False,
) -> None:
    """area51 docker-mirror's command line: IMAGE… under -d DEST, every platform."""
    from . import cli

    cli.mirror(
        images=images,
        destination=destination,
        platform=["linux/*"] if linux_only else None,
        log_level="debug" if verbose else "info",
    )
