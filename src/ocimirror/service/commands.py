"""`ocimirror serve` (registered by `ocimirror.cli`): the HTTP service, and the daemon with it.

The daemon comes from the command's context object, a `MirrorsFactory` that the CLI gives
(`ocimirror.compose`): this face does not import the sync face.


The heavy parts (asyncio, rich, the server, SQLAlchemy, the config's pydantic models) are
imported when the command runs: registering it costs `ocimirror --help` nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..settings.cli_options import ExecutionOpt, RegistryEndpoint

if TYPE_CHECKING:
    from ..netpolicy import AddressPolicy
    from ..settings.config import Config
    from ..settings.loading import Loaded
    from ..state.db import StateDB
    from ..workers.status import WorkersSnapshot
    from .oidc import OidcVerifier
    from .scheduled import MirrorsFactory

#: Set by Cloud Run in every service's environment.
CLOUD_RUN_ENV = "K_SERVICE"
#: The port when neither --port nor $PORT says (as the Cloud Run mirror).
DEFAULT_PORT = 8080
#: API tokens from the environment, comma-separated.
TOKENS_ENV = "OCIMIRROR_API_TOKENS"
#: Host names allowed besides the address served, comma-separated.
ALLOWED_HOSTS_ENV = "OCIMIRROR_ALLOWED_HOSTS"
#: More registries API jobs may reach, comma-separated (as --allow-registry).
ALLOWED_ENV = "OCIMIRROR_ALLOWED_REGISTRIES"


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


def oidc_from(config: Config) -> OidcVerifier | None:
    """The ID-token verifier `api.oidc` describes (None without it)."""
    if config.api.oidc is None:
        return None
    from ..settings.durations import parse_interval
    from .oidc import OidcVerifier

    o = config.api.oidc
    return OidcVerifier(
        audiences=tuple(o.audience),
        emails=tuple(o.emails),
        jwks_url=o.jwks_url,
        issuer=o.issuer,
        ttl=parse_interval(o.jwks_ttl).total_seconds(),
    )


def allowed_hosts_from(config: Config, flags: list[str] | None) -> list[str]:
    """Allowed Host names: --allowed-host, api.allowed_hosts and $OCIMIRROR_ALLOWED_HOSTS."""
    names = [*(flags or []), *config.api.allowed_hosts]
    names += os.environ.get(ALLOWED_HOSTS_ENV, "").split(",")
    return [n.strip() for n in names if n.strip()]


def address_policy(config: Config, allow: Sequence[str], allow_private: bool) -> AddressPolicy:
    """Where API jobs may copy from and to.

    Registries the config names (`registries:` keys, the mirrors' sources and targets,
    `api.allowed_registries`), $OCIMIRROR_ALLOWED_REGISTRIES and --allow-registry are
    reached at any address; any other host only at public addresses, unless
    --allow-private-networks or `api.allow_private_networks`.
    """
    from ..errors import ReferenceError
    from ..netpolicy import AddressPolicy
    from ..reference import Reference

    names: list[str] = []
    for key in config.registries:
        names.append(key)
        with contextlib.suppress(ReferenceError):  # docker.io: at registry-1.docker.io
            names.append(Reference.parse(f"{key}/a").api_host)
    for mirror in config.mirrors:
        for text in [*mirror.sources, *mirror.targets]:
            ref = Reference.parse(text)
            if ref.transport == "docker":
                names += [ref.registry, ref.api_host]
    names += config.api.allowed_registries
    names += [h.strip() for h in os.environ.get(ALLOWED_ENV, "").split(",") if h.strip()]
    names += allow
    try:
        return AddressPolicy(
            allowed=tuple(dict.fromkeys(names)),
            allow_private=allow_private or config.api.allow_private_networks,
            hint="allow it with --allow-registry",
        )
    except ValueError as e:
        raise ValueError(f"--allow-registry or ${ALLOWED_ENV}: {e}") from None


def serve(
    ctx: typer.Context,
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
            " as Cloud Run IAM, authenticates callers; the default on Cloud Run, where"
            " K_SERVICE is set).",
        ),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A name (besides the address served) that requests may give as Host and"
            " Origin, e.g. a reverse proxy's; repeatable; * allows any Host (also"
            f" api.allowed_hosts, ${ALLOWED_HOSTS_ENV}).",
            metavar="NAME",
        ),
    ] = None,
    allow_registry: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-registry",
            help="A registry (HOST[:PORT], a glob such as *.corp.example, or an address range"
            " such as 10.1.0.0/16) that API jobs may reach even at a loopback, private or"
            " link-local address; repeatable. Registries named in the config are allowed.",
            metavar="HOST[:PORT]",
        ),
    ] = None,
    allow_private_networks: Annotated[
        bool,
        typer.Option(
            "--allow-private-networks",
            help="Let API jobs reach any registry at loopback, private and link-local"
            " addresses (by default only the allowed registries, else public addresses).",
        ),
    ] = False,
    registry_endpoint: RegistryEndpoint = None,
    execution: ExecutionOpt = None,
) -> None:
    """The mirror as an HTTP service: the Cloud Run mirror API, jobs, metrics, dashboard."""
    import asyncio

    from rich.console import Console
    from rich.markup import escape

    from ..errors import OcimirrorError
    from ..logs import configure
    from ..settings.config import Config
    from ..settings.connection import apply_endpoint_flags
    from ..settings.loading import Loaded, load_config

    console = Console(stderr=True)
    try:
        apply_endpoint_flags(registry_endpoint)
        loaded = load_config(config) if config is not None else Loaded(Config(), "ocimirror", None)
        if execution is not None:
            loaded = replace(
                loaded, config=loaded.config.model_copy(update={"execution": execution.value})
            )
        bind_port = port_from(port)
        policy = address_policy(loaded.config, allow_registry or [], allow_private_networks)
    except (OcimirrorError, ValueError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    lg = loaded.config.logging
    configure(
        fmt=lg.format, level=lg.level, color=lg.color, output=lg.output, time_format=lg.time_format
    )
    raise typer.Exit(
        asyncio.run(
            _serve(
                loaded,
                config,
                bind_port,
                host,
                state,
                allow_unauthenticated,
                allowed_hosts_from(loaded.config, allowed_host),
                policy,
                ctx.obj,
            )
        )
    )


async def _serve(
    loaded: Loaded,
    config_path: Path | None,
    port: int,
    host: str | None,
    state_url: str | None,
    allow_unauthenticated: bool,
    allowed_hosts: list[str],
    policy: AddressPolicy,
    scheduled: MirrorsFactory | None,
) -> int:
    import asyncio

    import structlog
    from aiohttp import web

    from ..errors import OcimirrorError
    from ..metrics import MirrorMetrics
    from ..settings.connection import bucket_settings, keychain_for
    from ..state.connection import default_url
    from ..state.db import StateDB
    from ..state.retention import pruning
    from ..stores.pool import StorePool
    from ..webserver import AppRunner
    from ..workers.jobqueue import JobQueue
    from ..workers.schema import require_postgres
    from .access import AccessPolicy
    from .app import Service, make_app
    from .jobs import JobManager

    log = structlog.get_logger("ocimirror.serve")
    cfg = loaded.config
    tokens = tokens_from(cfg)
    oidc = oidc_from(cfg)
    if not tokens and oidc is None and os.environ.get(CLOUD_RUN_ENV):
        # Cloud Run: its IAM checks callers in front, as the original mirror relies on.
        allow_unauthenticated = True
        log.info(
            "on Cloud Run without API tokens: listening on every interface; access is left"
            " to the platform's IAM (deploy with --no-allow-unauthenticated)",
            service=os.environ[CLOUD_RUN_ENV],
        )
    bind, warning = listen_address(
        host, tokens=bool(tokens) or oidc is not None, allow_unauthenticated=allow_unauthenticated
    )
    if warning:
        log.warning(warning)
    daemon = (
        scheduled(config_path, loaded)
        if scheduled is not None and config_path is not None and cfg.mirrors
        else None
    )
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
            if cfg.execution == "workers":
                try:  # before anything listens: a clear error at start
                    require_postgres(state)
                except OcimirrorError as e:
                    log.error(str(e))
                    return 2
            pool = StorePool(keychain=keychain_for(cfg), settings=bucket_settings(cfg))
            metrics.watch_clients(pool.registry_clients)
            # With workers, the jobs API's copies go to the queue under the same policy.
            queue = (
                JobQueue(
                    state,
                    policy={"allowed": list(policy.allowed), "allow_private": policy.allow_private},
                )
                if cfg.execution == "workers"
                else None
            )
            jobs = JobManager(
                state, pool=pool, config=cfg, metrics=metrics, policy=policy, queue=queue
            )
            await jobs.start()
            access = AccessPolicy.of(
                tokens=tokens,
                bind=bind,
                port=port,
                allowed_hosts=allowed_hosts,
                allow_unauthenticated=allow_unauthenticated,
                oidc=oidc,
            )
            service = Service(
                state=state,
                jobs=jobs,
                metrics=metrics,
                daemon=daemon,
                policy=access,
                max_entries=cfg.api.max_entries,
                workers=_workers_of(state) if cfg.execution == "workers" else None,
            )
            runner = AppRunner(make_app(service), access_log=None, shutdown_timeout=5)
            await runner.setup()
            site = web.TCPSite(runner, bind, port)
            await site.start()
            log.info("listening", address=f"http://{bind}:{port}", tokens=len(tokens))
            log.info(
                "API jobs may reach",
                registries=list(policy.allowed),
                private_networks=policy.allow_private,
            )
            daemon_task = (
                asyncio.create_task(daemon.run(state=state, signals=False, metrics_server=False))
                if daemon is not None
                else None
            )
            service.ready = True
            # The history older than keep_history goes, now and every hour.
            async with pruning(state, cfg.history_limit):
                await stop.wait()
            log.info(
                "stopping: no new requests; running jobs are marked interrupted"
                + (" (those handed to the workers go on)" if queue is not None else "")
            )
            service.ready = False
            await jobs.close()  # running jobs stop now (handed-over ones go on)
            await runner.cleanup()
            code = 0
            if daemon_task is not None:
                code = await daemon_task
            await pool.close()
            return code
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _workers_of(state: StateDB) -> Callable[[], Awaitable[WorkersSnapshot]]:
    """What the queue workers do, read from the state database (schema made first)."""
    from ..workers.schema import ensure_schema
    from ..workers.status import snapshot

    made = False

    async def read() -> WorkersSnapshot:
        nonlocal made
        if not made:
            await ensure_schema(state)
            made = True
        return await snapshot(state)

    return read
