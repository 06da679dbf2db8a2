"""OIDC ID tokens as an alternative to static API tokens (`api.oidc`): Cloud Scheduler.

Cloud Scheduler (and any Google service account) calls `ocimirror serve` with
`Authorization: Bearer ID_TOKEN`, an RS256 JWT that Google signs. A token is accepted when

- its header says `alg: RS256` and names (`kid`) a key of the JWKS document at `jwks_url`
  (Google's by default), and the signature verifies with that key;
- `iss` is the issuer (`https://accounts.google.com`; Google also writes it without the
  scheme, which is accepted for that issuer), `aud` one of the audiences, `exp` in the
  future and `iat`/`nbf` not (both with `LEEWAY` seconds of clock skew);
- `email` is one of the allowed service-account emails and `email_verified` is true.

The JWKS is cached for `ttl` seconds (an injected clock tells the time); a `kid` it does
not hold refetches it, at most once a minute, so rotated keys are found. Verification uses
`cryptography` (the `gcp` extra); it is imported only when `api.oidc` is configured.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger("ocimirror.serve")

#: Google's signing keys for ID tokens, and the issuer it writes.
GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUER = "https://accounts.google.com"
#: Seconds of clock skew tolerated on `exp`, `iat` and `nbf`.
LEEWAY = 60.0
#: The least time between two fetches of the JWKS for an unknown `kid`.
MIN_REFETCH = 60.0
#: The most a JWT or a JWKS document may weigh.
MAX_TOKEN = 16 * 1024
MAX_JWKS = 256 * 1024


class TokenRejected(Exception):
    """An ID token that does not pass; the message says why (never the token)."""


def _b64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected("not base64url") from None


def _json(part: str) -> dict[str, Any]:
    try:
        data = json.loads(_b64(part))
    except (ValueError, RecursionError):  # nested past the parser's depth too
        raise TokenRejected("not JSON") from None
    if not isinstance(data, dict):
        raise TokenRejected("not a JSON object")
    return data


def _int(value: Any) -> int:
    data = _b64(str(value))
    if not data:
        raise TokenRejected("empty key number")
    return int.from_bytes(data, "big")


@dataclass
class OidcVerifier:
    """Verifies Google-signed (or any RS256 OIDC) ID tokens against one policy."""

    audiences: Sequence[str]
    emails: Sequence[str]
    jwks_url: str = GOOGLE_JWKS_URL
    issuer: str = GOOGLE_ISSUER
    ttl: float = 3600.0
    clock: Callable[[], float] = time.time
    _keys: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _fetched: float | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    @property
    def issuers(self) -> frozenset[str]:
        """The `iss` values accepted (Google writes its issuer with and without https://)."""
        names = {self.issuer}
        if self.issuer == GOOGLE_ISSUER:
            names.add(GOOGLE_ISSUER.removeprefix("https://"))
        return frozenset(names)

    async def _fetch(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.jwks_url, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                raise TokenRejected(f"JWKS answered HTTP {resp.status}")
            body = await resp.content.read(MAX_JWKS + 1)
        if len(body) > MAX_JWKS:
            raise TokenRejected("JWKS too large")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise TokenRejected("JWKS is not JSON") from None
        keys: dict[str, Any] = {}
        for jwk in doc.get("keys", []) if isinstance(doc, dict) else []:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or "kid" not in jwk:
                continue
            try:
                numbers = RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"]))
                keys[str(jwk["kid"])] = numbers.public_key()
            except (KeyError, ValueError, TokenRejected):
                continue
        self._keys = keys
        self._fetched = self.clock()

    async def _key(self, kid: str) -> Any:
        async with self._lock:
            now = self.clock()
            stale = self._fetched is None or now - self._fetched >= self.ttl
            unknown = kid not in self._keys and (
                self._fetched is None or now - self._fetched >= MIN_REFETCH
            )
            if stale or unknown:
                try:
                    await self._fetch()
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise TokenRejected(f"JWKS could not be fetched: {type(e).__name__}") from None
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected("signed by an unknown key")
        return key

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the token's claims, or raise TokenRejected saying why."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise TokenRejected("not a JWT")
        head, body, sig = token.split(".")
        header = _json(head)
        if header.get("alg") != "RS256":
            raise TokenRejected("not signed with RS256")
        key = await self._key(str(header.get("kid", "")))
        try:
            key.verify(_b64(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise TokenRejected("bad signature") from None
        claims = _json(body)
        now = self.clock()
        if claims.get("iss") not in self.issuers:
            raise TokenRejected("wrong issuer")
        aud = claims.get("aud")
        given = aud if isinstance(aud, list) else [aud]
        if not any(a in self.audiences for a in given):
            raise TokenRejected("wrong audience")
        for name in ("exp", "iat"):
            if not isinstance(claims.get(name), int | float):
                raise TokenRejected(f"no {name}")
        if claims["exp"] <= now - LEEWAY:
            raise TokenRejected("expired")
        if claims["iat"] > now + LEEWAY or claims.get("nbf", 0) > now + LEEWAY:
            raise TokenRejected("not valid yet")
        if claims.get("email") not in self.emails or claims.get("email_verified") is not True:
            raise TokenRejected("email not allowed")
        return claims

    async def accepts(self, token: str) -> bool:
        """Tell whether the token passes; a rejection is logged with its reason only."""
        try:
            claims = await self.verify(token)
        except TokenRejected as e:
            log.info("ID token refused", reason=str(e))
            return False
        log.debug("ID token accepted", email=claims.get("email"))
        return True
