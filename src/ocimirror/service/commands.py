"""`ocimirror serve` (registered by `ocimirror.cli`): the HTTP service, and the daemon with it.

The heavy parts (the server, SQLAlchemy) are imported when the command runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ..sync.config import Config, Loaded

#: The port when neither --port nor $PORT says (as the Cloud Run mirror).
DEFAULT_PORT = 8080
#: API tokens from the environment, comma-separated.
TOKENS_ENV = "OCIMIRROR_API_TOKENS"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_address(
    host: str | None, *, tokens: bool, allow_unauthenticated: bool
) -> tuple[str, str | None]:
    """The address to bind, and a warning to log (or None).

    Without any API token the service binds to loopback only, whatever --host says,
    unless --allow-unauthenticated (for a platform that authenticates in front of it).
    """
    if tokens or allow_unauthenticated:
        return host or "0.0.0.0", None
    if host and not _is_loopback(host):
        return "127.0.0.1", (
            f"no API token configured: listening on 127.0.0.1 only, not {host}"
            f" (set {TOKENS_ENV} or api.tokens, or pass --allow-unauthenticated)"
        )
    return host or "127.0.0.1", (
        f"no API token configured: listening on loopback only (set {TOKENS_ENV} or api.tokens)"
    )


def port_from(port: int | None) -> int:
    """--port, else $PORT, else 8080."""
    if port is not None:
        return port
    text = os.environ.get("PORT", "")
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"PORT={text!r} is not a port number")
    return int(text)


def tokens_from(config: Config) -> list[str]:
    """API tokens from the config and from $OCIMIRROR_API_TOKENS."""
    tokens = [t.reveal() for t in config.api.tokens]
    tokens += [t.strip() for t in os.environ.get(TOKENS_ENV, "").split(",") if t.strip()]
    return [t for t in tokens if t]


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="A mirror config: its mirrors run on schedule too.",
            metavar="FILE",
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port to listen on (default: $PORT, else 8080).")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to bind (default: all with tokens, else 127.0.0.1)."),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="State database URL (default: NAME.state.db beside the config, else"
            " ./ocimirror.state.db).",
            envvar="OCIMIRROR_STATE",
            metavar="URL",
        ),
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated",
            help="Listen beyond loopback without API tokens (when something in front, such"
            " as Cloud Run IAM, authenticates callers).",
        ),
    ] = False,
) -> None:
    """The mirror as an HTTP service: the Cloud Run mirror API, jobs, metrics, dashboard."""
    from ..errors import OcimirrorError
    from ..logs import configure
    from ..sync.config import Config, Loaded, load_config

    console = Console(stderr=True)
    try:
        loaded = load_config(config) if config is not None else Loaded(Config(), "ocimirror", None)
        bind_port = port_from(port)
    except (OcimirrorError, ValueError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    lg = loaded.config.logging
    configure(fmt=lg.format, level=lg.level, color=lg.color, output=lg.output)
    raise typer.Exit(
        asyncio.run(_serve(loaded, config, bind_port, host, state, allow_unauthenticated))
    )


async def _serve(
    loaded: Loaded,
    config_path: Path | None,
    port: int,
    host: str | None,
    state_url: str | None,
    allow_unauthenticated: bool,
) -> int:
    import structlog
    from aiohttp import web

    from ..metrics import MirrorMetrics
    from ..stores.pool import StorePool
    from ..sync.daemon import Daemon
    from ..sync.runner import bucket_settings, keychain_for
    from ..sync.state import StateDB, default_url
    from .app import Service, make_app
    from .jobs import JobManager

    log = structlog.get_logger("ocimirror.serve")
    cfg = loaded.config
    tokens = tokens_from(cfg)
    bind, warning = listen_address(
        host, tokens=bool(tokens), allow_unauthenticated=allow_unauthenticated
    )
    if warning:
        log.warning(warning)
    daemon = Daemon(config_path, loaded=loaded) if config_path is not None and cfg.mirrors else None
    metrics = daemon.metrics if daemon is not None else MirrorMetrics()
    url = state_url or cfg.state
    if url is None:
        url = (
            default_url(config_path)
            if config_path
            else f"sqlite:///{Path.cwd()}/ocimirror.state.db"
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        stop.set()
        if daemon is not None:
            daemon.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if daemon is not None:
        loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        async with StateDB(url) as state:
            pool = StorePool(keychain=keychain_for(cfg), settings=bucket_settings(cfg))
            metrics.watch_clients(pool.registry_clients)
            jobs = JobManager(state, pool=pool, config=cfg, metrics=metrics)
            await jobs.start()
            service = Service(state=state, jobs=jobs, metrics=metrics, daemon=daemon, tokens=tokens)
            runner = web.AppRunner(make_app(service), access_log=None, shutdown_timeout=5)
            await runner.setup()
            site = web.TCPSite(runner, bind, port)
            await site.start()
            log.info("listening", address=f"http://{bind}:{port}", tokens=len(tokens))
            daemon_task = (
                asyncio.create_task(daemon.run(state=state, signals=False, metrics_server=False))
                if daemon is not None
                else None
            )
            service.ready = True
            await stop.wait()
            log.info("stopping: no new requests; running jobs are marked interrupted")
            service.ready = False
            await jobs.close()  # running jobs stop now and are marked interrupted
            await runner.cleanup()
            code = 0
            if daemon_task is not None:
                code = await daemon_task
            await pool.close()
            return code
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
