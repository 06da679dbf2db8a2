"""The `ocimirror worker` command (registered by `ocimirror.cli`).

Heavy modules (procrastinate, psycopg, SQLAlchemy, the engine) are imported when the
command runs: registering it costs `ocimirror --help` nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..settings.cli_options import RegistryEndpoint


def worker(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The config whose registries (credentials, TLS, limits) the copies use.",
            metavar="FILE",
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="The PostgreSQL state database whose queue to work (default: the config's state).",
            envvar="OCIMIRROR_STATE",
            metavar="postgresql://…",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", min=1, max=256, help="Copies this worker runs at once."),
    ] = 8,
    heartbeat: Annotated[
        str,
        typer.Option(
            "--heartbeat",
            help="How often this worker says it is alive (and looks for stalled copies).",
            metavar="DURATION",
        ),
    ] = "10s",
    stalled_after: Annotated[
        str,
        typer.Option(
            "--stalled-after",
            help="Retry elsewhere the copies of a worker silent this long (killed, lost).",
            metavar="DURATION",
        ),
    ] = "30s",
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="On SIGTERM, how long running copies may finish before they are handed"
            " back to the queue (retried elsewhere).",
            metavar="DURATION",
        ),
    ] = "25s",
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="This worker's name, unique among workers (default: HOST-PID)."
        ),
    ] = None,
    registry_endpoint: RegistryEndpoint = None,
) -> None:
    """Take image copies from the queue of `execution: workers` and run them, until SIGTERM."""
    import asyncio

    from rich.console import Console
    from rich.markup import escape

    from ..errors import OcimirrorError
    from ..logs import configure
    from ..settings.config import Config
    from ..settings.connection import apply_endpoint_flags
    from ..settings.durations import parse_interval
    from ..settings.loading import load_config
    from ..state.connection import normalise_url
    from .worker import run_worker

    console = Console(stderr=True)
    try:
        apply_endpoint_flags(registry_endpoint)
        cfg = load_config(config).config if config is not None else Config()
        url = state or cfg.state
        if url is None:
            raise OcimirrorError(
                "no state database: give --state postgresql://… (or state: in the config)"
            )
        if normalise_url(url).get_backend_name() != "postgresql":
            raise OcimirrorError(
                "ocimirror worker needs a PostgreSQL state database (postgresql://…);"
                " SQLite runs copies in-process"
            )
        beat = parse_interval(heartbeat).total_seconds()
        stalled = parse_interval(stalled_after).total_seconds()
        grace_s = parse_interval(grace).total_seconds()
        if stalled <= beat:
            raise OcimirrorError(
                f"--stalled-after ({stalled_after}) must be longer than --heartbeat ({heartbeat})"
            )
    except (OcimirrorError, ValueError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    lg = cfg.logging
    configure(
        fmt=lg.format, level=lg.level, color=lg.color, output=lg.output, time_format=lg.time_format
    )
    asyncio.run(
        run_worker(
            cfg,
            url,
            concurrency=concurrency,
            heartbeat=beat,
            stalled_after=stalled,
            grace=grace_s,
            name=name,
        )
    )
