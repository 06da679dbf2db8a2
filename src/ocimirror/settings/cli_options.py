"""Command-line options every face takes the same way (typer annotations)."""

from __future__ import annotations

from enum import StrEnum
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


class Execution(StrEnum):
    """Where copies run (`--execution`; the config's `execution`)."""

    IN_PROCESS = "in-process"
    WORKERS = "workers"


ExecutionOpt = Annotated[
    Execution | None,
    typer.Option(
        "--execution",
        help=(
            "Where copies run: in-process, or workers (`ocimirror worker` processes take"
            " them from a queue in the PostgreSQL state database). Default: the config's"
            " execution, else in-process."
        ),
        envvar="OCIMIRROR_EXECUTION",
    ),
]
