"""Command-line options every face takes the same way (typer annotations)."""

from __future__ import annotations

from typing import Annotated

import typer

RegistryEndpoint = Annotated[
    list[str] | None,
    typer.Option(
        "--registry-endpoint",
        help=(
            "Reach registry HOST at URL (scheme://host:port) while names, credentials and"
            " provider detection keep HOST; repeatable. Also $OCIMIRROR_REGISTRY_ENDPOINTS"
            " (HOST=URL,HOST=URL) and the config's registries.HOST.endpoint."
        ),
        metavar="HOST=URL",
    ),
]
