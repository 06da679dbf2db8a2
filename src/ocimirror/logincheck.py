"""`ocimirror login-check HOST` (registered by `ocimirror.cli`): which cloud login a host
gets, as whom, and whether a token can be had, without copying anything.

The SDKs are imported when the command runs: registering it costs `--help` nothing.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .settings.cli_options import RegistryEndpoint


def login_check(
    host: Annotated[str, typer.Argument(help="Registry host (gcr.io, ACCOUNT.dkr.ecr...).")],
    provider: Annotated[
        str | None,
        typer.Option("--provider", help="ecr, gcp or azure (default: from the host name)."),
    ] = None,
    registry_endpoint: RegistryEndpoint = None,
) -> None:
    """Say which provider and identity would log in to HOST, and whether a token can be had."""
    import asyncio
    import time

    from rich.console import Console
    from rich.markup import escape

    from .auth.providers import PROVIDERS, ProviderSource, detect
    from .errors import OcimirrorError
    from .settings.connection import apply_endpoint_flags, endpoint_base_for

    console = Console(stderr=True)
    host = host.strip().lower()
    try:
        apply_endpoint_flags(registry_endpoint)
    except OcimirrorError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    if provider is not None and provider not in PROVIDERS:
        console.print(f"[red]error:[/] --provider is one of {', '.join(PROVIDERS)}")
        raise typer.Exit(2)
    name = provider or detect(host)
    if name is None:
        print(f"{host}: no cloud provider (docker's auth files or anonymous)")
        raise typer.Exit(0)
    source = ProviderSource({host: name}, endpoint_base=endpoint_base_for)
    cloud = source.provider(name)

    async def check() -> tuple[str, float | None]:
        identity = await cloud.identity(host)
        login = await cloud.login(host)
        return identity, login.expires_at

    print(f"{host}: provider {cloud.title}")
    try:
        identity, expires_at = asyncio.run(check())
    except OcimirrorError as e:
        print(f"token: no ({e})")
        raise typer.Exit(1) from None
    print(f"identity: {identity}")
    if expires_at is None:
        print("token: yes")
    else:
        left = int((expires_at - time.time()) // 60)
        print(f"token: yes, expires in {left} min" if left >= 0 else "token: yes, expired")
