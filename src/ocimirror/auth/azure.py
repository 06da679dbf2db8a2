"""Azure Container Registry: an Entra ID token exchanged for an ACR refresh token.

For `*.azurecr.io`: azure-identity's `DefaultAzureCredential` (a service principal in
`AZURE_TENANT_ID`/`AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`, workload identity, managed
identity, the Azure CLI's login) gives an Entra access token for the registry audience;
`POST /oauth2/exchange` at the registry (`grant_type=access_token`, `service`,
`access_token`) turns it into an ACR refresh token, which the normal token flow then
presents as the password of the user `00000000-0000-0000-0000-000000000000` (as
`az acr login` does). The refresh token's `exp` says when to exchange again.

azure-identity (the `azure` extra) is synchronous; it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from .providers import Login, failure
from .source import Credentials

TITLE = "Azure Container Registry"
USERNAME = "00000000-0000-0000-0000-000000000000"
#: The Entra scope of the registry's data plane (public cloud).
SCOPE = "https://containerregistry.azure.net/.default"
_NO_EXTRA = "the azure extra is not installed (pip install 'ocimirror[azure]')"
#: Seconds an exchanged refresh token is trusted when it says nothing of its expiry.
_DEFAULT_LIFETIME = 3 * 3600.0


class TokenCredential(Protocol):
    """What azure-identity's credentials offer (tests inject a stand-in)."""

    def get_token(self, *scopes: str) -> Any:
        """Return an object with `token` and `expires_on`."""
        ...


def _jwt_expiry(token: str) -> float | None:
    """Read the `exp` claim of a JWT without verifying it (the registry does that)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
    except (IndexError, ValueError, binascii.Error, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) else None


class AzureProvider:
    """ACR logins through `/oauth2/exchange` (see the module doc)."""

    title = TITLE

    def __init__(
        self,
        *,
        endpoint_base: Callable[[str], str],
        credential: TokenCredential | None = None,
    ) -> None:
        """`endpoint_base(host)`: where the registry is reached; `credential`: instead of
        DefaultAzureCredential (tests)."""
        self._endpoint_base = endpoint_base
        self._credential = credential

    def _entra_token(self, host: str) -> str:
        try:
            from azure.core.exceptions import ClientAuthenticationError
            from azure.identity import CredentialUnavailableError, DefaultAzureCredential
        except ImportError:
            if self._credential is None:
                raise failure(host, TITLE, _NO_EXTRA, unavailable=True) from None
            return str(self._credential.get_token(SCOPE).token)
        if self._credential is None:
            self._credential = DefaultAzureCredential()
        try:
            return str(self._credential.get_token(SCOPE).token)
        except CredentialUnavailableError:
            raise failure(
                host,
                TITLE,
                "no Azure credentials (AZURE_* service principal, workload or managed"
                " identity, az login)",
                unavailable=True,
            ) from None
        except ClientAuthenticationError as e:
            raise failure(
                host, TITLE, f"Entra ID refused: {str(e).splitlines()[0][:300]}"
            ) from None

    async def login(self, host: str) -> Login:
        """Exchange an Entra token at the registry for a refresh token."""
        entra = await asyncio.to_thread(self._entra_token, host)
        url = self._endpoint_base(host) + "/oauth2/exchange"
        form = {"grant_type": "access_token", "service": host, "access_token": entra}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
                session.post(url, data=form, allow_redirects=False) as resp,
            ):
                status = resp.status
                body = await resp.read() if status == 200 else b""
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise failure(host, TITLE, f"token exchange failed: {type(e).__name__}") from None
        if status != 200:
            raise failure(host, TITLE, f"the registry refused the token exchange (HTTP {status})")
        try:
            refresh = json.loads(body).get("refresh_token")
        except (ValueError, AttributeError, RecursionError):
            refresh = None
        if not isinstance(refresh, str) or not refresh:
            raise failure(host, TITLE, "the token exchange returned no refresh token")
        expires_at = _jwt_expiry(refresh)
        if expires_at is None:
            import time

            expires_at = time.time() + _DEFAULT_LIFETIME
        return Login(Credentials(username=USERNAME, password=refresh), expires_at)

    async def identity(self, host: str) -> str:
        """Name the kind of credential the default chain uses (Entra tokens say no more)."""
        await asyncio.to_thread(self._entra_token, host)
        return type(self._credential).__name__
