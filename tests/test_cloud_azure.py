"""Azure Container Registry: an Entra token exchanged at the registry for a refresh token.

Stand-ins on loopback: the App Service managed identity endpoint (`IDENTITY_ENDPOINT`,
`IDENTITY_HEADER`), which azure-identity's DefaultAzureCredential asks over plain HTTP as
on App Service itself; the registry's `/oauth2/exchange` (a front before a token-auth
registry); and the token service, whose one user is ACR's null GUID with the exchanged
refresh token as password. The registry is reached under an `*.azurecr.io` name through
the endpoint mapping.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocimirror.auth.azure import SCOPE, USERNAME, AzureProvider
from ocimirror.auth.providers import ProviderFailed
from ocimirror.testkit.command import ocimirror_async
from ocimirror.testkit.front import Front, serve
from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed

ACR = "mirror.azurecr.io"
ENTRA_TOKEN = "entra-stand-in-access-token"
IDENTITY_SECRET = "identity-header-secret"


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


#: What the stand-in exchange answers: a JWT-shaped token whose `exp` is 3 hours away.
REFRESH = _jwt({"exp": int(time.time()) + 3 * 3600, "grant_type": "refresh_token"})


@asynccontextmanager
async def identity_endpoint(asked: list[dict[str, str]]) -> AsyncIterator[str]:
    """App Service's managed identity endpoint; yields its URL."""

    async def token(request: web.Request) -> web.Response:
        if request.headers.get("X-IDENTITY-HEADER") != IDENTITY_SECRET:
            return web.json_response({"error": "bad header"}, status=401)
        asked.append(dict(request.query))
        return web.json_response(
            {
                "access_token": ENTRA_TOKEN,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query.get("resource", ""),
                "token_type": "Bearer",
            }
        )

    app = web.Application()
    app.router.add_get("/msi/token", token)
    async with serve(app) as port:
        yield f"http://127.0.0.1:{port}/msi/token"


def exchange(exchanged: list[dict[str, str]]) -> Any:
    """A front intercept answering POST /oauth2/exchange as ACR does."""

    async def intercept(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if request.path != "/oauth2/exchange":
            return None
        form = dict(await request.post())
        exchanged.append({k: str(v) for k, v in form.items()})
        if form.get("grant_type") != "access_token" or form.get("access_token") != ENTRA_TOKEN:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        return web.json_response({"refresh_token": REFRESH})

    return intercept


@pytest.fixture
def acr_registry(registry_factory: Any, token_server_factory: Any) -> LocalRegistry:
    server = token_server_factory(users={USERNAME: REFRESH}, anonymous_pull=False)
    registry: LocalRegistry = registry_factory("acr", auth="token", token_server=server)
    return registry


def azure_env(tmp_path: Path) -> dict[str, str]:
    """Nothing of this machine's own Azure setup."""
    skip = ("AZURE_", "IDENTITY_", "MSI_", "IMDS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(DOCKER_CONFIG=str(tmp_path / "docker"), HOME=str(tmp_path), COLUMNS="200")
    return env


async def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `ocimirror ARGS` in `env` (the whole environment)."""
    return await ocimirror_async(*args, base=env)


async def test_managed_identity_token_is_exchanged_and_pushes(
    acr_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path
) -> None:
    """DefaultAzureCredential (App Service managed identity) → /oauth2/exchange → the
    refresh token logs in through the registry's token service; the copy lands."""
    await seed(registry, "lib/app", [("1", make_image(layer_size=200, seed="acr"))])
    asked: list[dict[str, str]] = []
    exchanged: list[dict[str, str]] = []
    front = Front(acr_registry, exchange(exchanged))
    async with identity_endpoint(asked) as endpoint, front.running():
        env = {
            **azure_env(tmp_path),
            "IDENTITY_ENDPOINT": endpoint,
            "IDENTITY_HEADER": IDENTITY_SECRET,
            "OCIMIRROR_REGISTRY_ENDPOINTS": f"{ACR}=http://{front.host}",
        }
        code, out, err = await _run(["copy", f"{registry.host}/lib/app:1", f"{ACR}/app:1"], env)
        assert code == 0, out + err
        code, out, err = await _run(["login-check", ACR], env)
        assert code == 0, out + err
        # The refresh token's own exp (3 hours after it was made), not a default.
        assert re.search(r"token: yes, expires in 1[0-7]\d min", out), out
    assert acr_registry.tags("app") == ["1"]
    assert asked[0]["resource"] == SCOPE.removesuffix("/.default")
    assert exchanged[0]["service"] == ACR
    assert exchanged[0]["grant_type"] == "access_token"
    assert REFRESH not in out + err
    assert ENTRA_TOKEN not in out + err


async def test_a_refused_exchange_is_one_line() -> None:
    """A registry that refuses the exchange: the error names host, provider and status."""

    class Entra:
        def get_token(self, *scopes: str) -> Any:
            return type("AccessToken", (), {"token": "not-the-right-one", "expires_on": 0})()

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)

    app = web.Application()
    app.router.add_post("/oauth2/exchange", refuse)
    async with serve(app) as port:
        provider = AzureProvider(
            endpoint_base=lambda host: f"http://127.0.0.1:{port}", credential=Entra()
        )
        with pytest.raises(ProviderFailed) as e:
            await provider.login(ACR)
    assert str(e.value) == (
        f"{ACR}: Azure Container Registry: the registry refused the token exchange (HTTP 401)"
    )
