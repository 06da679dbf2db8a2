"""`ocimirror proxy` (registered by `ocimirror.cli`): serve registries under the proxy's name.

The server (and asyncio, rich, the settings' models) is imported when the command runs:
registering it costs `ocimirror --help` nothing.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..settings.cli_options import RegistryEndpoint

if TYPE_CHECKING:
    from .settings import ProxySettings

_EPILOG = (
    "Environment (as serverless-registry-proxy): REGISTRY_HOST, REPO_PREFIX, AUTH_HEADER,"
    " DISABLE_BROWSER_REDIRECTS, PORT; also STREAM_BLOBS, OCIMIRROR_PROXY_TOKENS,"
    " OCIMIRROR_PROXY_CACHE, OCIMIRROR_PROXY_CACHE_LOCAL, OCIMIRROR_PROXY_CACHE_REDIRECT,"
    " OCIMIRROR_PROXY_CACHE_CHECKSUM,"
    " OCIMIRROR_PROXY_CACHE_MAX_SIZE, OCIMIRROR_PROXY_TAG_TTL,"
    " OCIMIRROR_PROXY_BUCKET_REDIRECT and OCIMIRROR_PROXY_ALLOW_PRIVATE_REDIRECTS; an object-store cache and a bucket REGISTRY_HOST read"
    " AWS_*, GOOGLE_* and AZURE_* as those clouds' tools do. With"
    " GOOGLE_APPLICATION_CREDENTIALS (and no AUTH_HEADER) a Google REGISTRY_HOST (gcr.io,"
    " *-docker.pkg.dev) is logged in to with the key's identity;"
    " OCIMIRROR_REGISTRY_ENDPOINTS (HOST=URL,...) moves upstream connections."
    " Flags win over the environment; serverless-registry-proxy's Go flags -port=,"
    " -registeryHost= and -repoPrefix= are accepted too."
)


def proxy(
    port: Annotated[
        int | None,
        typer.Option("--port", "-port", help="Port to listen on (default: $PORT, else 8080)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (default: 0.0.0.0).")
    ] = None,
    registry_host: Annotated[
        str | None,
        typer.Option(
            "--registry-host",
            "-registeryHost",
            "--registeryHost",
            help="The default upstream registry (default: $REGISTRY_HOST); or a bucket"
            " holding the registry layout, served pull-only: s3://BUCKET or s3://BUCKET/PREFIX,"
            " r2://ACCOUNT/BUCKET, gs://BUCKET, az://ACCOUNT/CONTAINER, file:///DIR"
            " (credentials from AWS_*, GOOGLE_*, AZURE_*).",
            metavar="HOST|BUCKET",
        ),
    ] = None,
    repo_prefix: Annotated[
        str | None,
        typer.Option(
            "--repo-prefix",
            "-repoPrefix",
            "--repoPrefix",
            help="Repository prefix upstream: NAME is served from PREFIX/NAME"
            " (default: $REPO_PREFIX).",
            metavar="PREFIX",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML with several upstreams and client credentials.",
            metavar="FILE",
        ),
    ] = None,
    stream_blobs: Annotated[
        bool | None,
        typer.Option(
            "--stream-blobs/--redirect-blobs",
            help="Serve blob bytes through the proxy instead of passing the upstream's"
            " redirects (to its storage or CDN) on to clients.",
            show_default=False,
        ),
    ] = None,
    allow_private_redirects: Annotated[
        bool | None,
        typer.Option(
            "--allow-private-redirects/--public-redirects-only",
            help="Let redirects the proxy follows itself (--stream-blobs, the cache's"
            " fetches) lead to loopback, private and link-local addresses (default:"
            " $OCIMIRROR_PROXY_ALLOW_PRIVATE_REDIRECTS, else public addresses only).",
            show_default=False,
        ),
    ] = None,
    disable_browser_redirects: Annotated[
        bool | None,
        typer.Option(
            "--disable-browser-redirects",
            help="Answer 404 to non-/v2/ paths instead of redirecting to the upstream's page.",
            show_default=False,
        ),
    ] = None,
    keychain: Annotated[
        bool,
        typer.Option(
            "--keychain",
            help="Log in to the default upstream with docker's / podman's stored"
            " credentials (credential helpers included).",
        ),
    ] = False,
    authfile: Annotated[
        Path | None,
        typer.Option(
            "--authfile",
            help="Like --keychain, from this docker config.json / auth.json only.",
            metavar="FILE",
        ),
    ] = None,
    client_token: Annotated[
        list[str] | None,
        typer.Option(
            "--client-token",
            help="A token clients must present (Bearer, or as a Basic password); repeatable.",
            metavar="TOKEN",
        ),
    ] = None,
    htpasswd: Annotated[
        Path | None,
        typer.Option("--htpasswd", help="Users clients log in as (htpasswd file).", metavar="FILE"),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            help="Pull-through cache: a directory, or an object store URL (s3://bucket/prefix,"
            " gs://, az://, file://, memory://; credentials from AWS_*, GOOGLE_*, AZURE_*)"
            " where blobs and manifests are kept and served from (default:"
            " $OCIMIRROR_PROXY_CACHE; none without it).",
            metavar="DIR|URL",
        ),
    ] = None,
    cache_local: Annotated[
        Path | None,
        typer.Option(
            "--cache-local",
            help="With an object-store cache: the local directory for its index and downloads"
            " in progress (default: $OCIMIRROR_PROXY_CACHE_LOCAL, else a temporary one).",
            metavar="DIR",
        ),
    ] = None,
    cache_redirect: Annotated[
        bool | None,
        typer.Option(
            "--cache-redirect/--no-cache-redirect",
            help="With an s3://, gs:// or az:// cache: answer a GET of a cached blob with a"
            " redirect to a presigned URL of it, so the bytes go from the bucket to the client"
            " (default: $OCIMIRROR_PROXY_CACHE_REDIRECT, else off: bytes go through the proxy).",
            show_default=False,
        ),
    ] = None,
    cache_checksum: Annotated[
        bool | None,
        typer.Option(
            "--cache-checksum/--no-cache-checksum",
            help="With an s3:// cache: send each upload's SHA-256 for the store to check, so a"
            " blob damaged on its way up is refused, not kept (default:"
            " $OCIMIRROR_PROXY_CACHE_CHECKSUM, else on; off only for an S3-compatible store"
            " that refuses x-amz-checksum-sha256).",
            show_default=False,
        ),
    ] = None,
    cache_max_size: Annotated[
        str | None,
        typer.Option(
            "--cache-max-size",
            help="Size limit of the cache (20GiB, 500MB...): least recently used blobs are"
            " evicted beyond it (default: no limit).",
            metavar="SIZE",
        ),
    ] = None,
    tag_ttl: Annotated[
        str | None,
        typer.Option(
            "--tag-ttl",
            help="How long a cached tag is served before it is revalidated upstream with a"
            " HEAD (5m, 1h, 30s...; default 5m).",
            metavar="DURATION",
        ),
    ] = None,
    bucket_redirect: Annotated[
        bool | None,
        typer.Option(
            "--bucket-redirect/--no-bucket-redirect",
            help="With a bucket --registry-host (s3, r2, gs, az): answer a blob GET with a"
            " redirect to a presigned URL of its object, so the bytes go from the bucket to"
            " the client, which then sees the bucket's address (default:"
            " $OCIMIRROR_PROXY_BUCKET_REDIRECT, else off: bytes go through the proxy).",
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="text or json.", metavar="FORMAT")
    ] = "text",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning...")] = "info",
    registry_endpoint: RegistryEndpoint = None,
) -> None:
    """A pull-only registry proxy: serve upstream registries under this host's name."""
    import asyncio

    from rich.console import Console
    from rich.markup import escape

    from ..errors import OcimirrorError
    from ..logs import configure
    from .settings import load_settings

    console = Console(stderr=True)
    try:
        from ..settings.connection import apply_endpoint_flags

        apply_endpoint_flags(registry_endpoint)
        settings = load_settings(
            port=port,
            host=host,
            registry_host=registry_host,
            repo_prefix=repo_prefix,
            config=config,
            stream_blobs=stream_blobs,
            disable_browser_redirects=disable_browser_redirects,
            keychain=keychain,
            authfile=authfile,
            client_tokens=client_token or (),
            htpasswd=htpasswd,
            cache=cache,
            cache_local=cache_local,
            cache_redirect=cache_redirect,
            cache_checksum=cache_checksum,
            cache_max_size=cache_max_size,
            tag_ttl=tag_ttl,
            bucket_redirect=bucket_redirect,
            allow_private_redirects=allow_private_redirects,
        )
        if log_format not in ("text", "json"):
            raise ValueError(f"--log-format must be text or json, not {log_format!r}")
    except (OcimirrorError, ValueError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    configure(fmt="json" if log_format == "json" else "text", level=log_level)
    raise typer.Exit(asyncio.run(_serve(settings)))


proxy.__doc__ = f"{proxy.__doc__}\n\n{_EPILOG}"


async def _serve(settings: ProxySettings) -> int:
    import asyncio

    import structlog
    from aiohttp import web

    from ..webserver import AppRunner
    from .app import make_proxy_app

    log = structlog.get_logger("ocimirror.proxy")
    import sqlite3

    from ..errors import OcimirrorError

    try:
        app = make_proxy_app(settings)
    except (ValueError, OSError, sqlite3.Error, OcimirrorError) as e:
        log.error(str(e))
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = AppRunner(app, access_log=None, shutdown_timeout=5)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "listening",
            address=f"http://{settings.host}:{settings.port}",
            upstreams={
                u.name or "(default)": "/".join(p for p in (u.host, u.prefix) if p)
                for u in settings.upstreams
            },
            stream_blobs=settings.stream_blobs,
            client_auth=settings.clients.enabled,
            cache=settings.cache.where,
            cache_redirect=settings.cache.redirect,
            cache_max_size=settings.cache.max_size,
            tag_ttl=settings.cache.tag_ttl,
        )
        await stop.wait()
        log.info("stopping")
        return 0
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
