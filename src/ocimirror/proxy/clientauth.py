"""Credentials clients present to the proxy itself: tokens and an htpasswd file.

A token is accepted as `Authorization: Bearer TOKEN` or as the password of Basic auth
with any user name (so `docker login -u any -p TOKEN` works). htpasswd entries of every
format Apache's `htpasswd` writes (bcrypt, APR1 MD5, SHA1, crypt) are checked by
`htpasswd -v` (Debian's apache2-utils) with the password on its standard input; `{SHA}`
entries are checked here too. Successful checks are remembered for `CACHE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

log = structlog.get_logger("ocimirror.proxy")

#: Seconds a successful htpasswd check is remembered.
CACHE_SECONDS = 300.0
#: The challenge clients get when they must log in.
CHALLENGE = 'Basic realm="ocimirror-proxy"'


def parse_basic(header: str) -> tuple[str, str] | None:
    """Return (user, password) from a Basic Authorization header, or None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class ClientAuthenticator:
    """Checks the Authorization header of requests to the proxy."""

    def __init__(self, tokens: Sequence[str] = (), htpasswd: Path | None = None) -> None:
        """Accept these tokens and the users of this htpasswd file."""
        self.tokens = [t for t in tokens if t]
        self.htpasswd = htpasswd
        self._ok: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        """Tell whether clients must authenticate at all."""
        return bool(self.tokens) or self.htpasswd is not None

    async def check(self, header: str | None) -> bool:
        """Tell whether the header carries valid credentials (always true when disabled)."""
        if not self.enabled:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return self._token_ok(value.strip())
        basic = parse_basic(header)
        if basic is None:
            return False
        user, password = basic
        if self._token_ok(password):
            return True
        if self.htpasswd is None:
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        if self._ok.get(key, 0.0) > time.monotonic():
            return True
        if await self._htpasswd_ok(user, password):
            self._ok[key] = time.monotonic() + CACHE_SECONDS
            return True
        return False

    def _token_ok(self, value: str) -> bool:
        """Tell whether `value` is one of the tokens: every token compared (no early exit),
        each in constant time."""
        candidate = value.encode()
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(candidate, token.encode())
        return ok and bool(candidate)

    async def _htpasswd_ok(self, user: str, password: str) -> bool:
        assert self.htpasswd is not None
        try:
            lines = self.htpasswd.read_text().splitlines()
        except OSError as e:
            log.error("cannot read the htpasswd file", path=str(self.htpasswd), error=str(e))
            return False
        entry = next((ln.split(":", 1)[1] for ln in lines if ln.startswith(f"{user}:")), None)
        if entry is None or "\n" in password:
            return False
        if entry.startswith("{SHA}"):
            digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
            return hmac.compare_digest(entry[5:].strip(), digest)
        try:
            proc = await asyncio.create_subprocess_exec(
                "htpasswd",
                "-v",
                "-i",
                str(self.htpasswd),
                user,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as e:
            log.error("cannot run htpasswd (apache2-utils) to check a password", error=str(e))
            return False
        await proc.communicate(password.encode())
        return proc.returncode == 0
