"""Credential helpers (`docker-credential-NAME get`) and the source of per-host helpers.

Docker's helper protocol: the server URL on stdin, `{"Username": ..., "Secret": ...}` on
stdout (`<token>` as the user name means an identity token), "credentials not found" (or a
bare non-zero exit) when the helper has nothing for the host. An answer carries no expiry,
so it is trusted for `HELPER_MAX_AGE` seconds and then asked again: the tokens such helpers
hand out (ECR's: 12 hours) end, and a long-running daemon must pick up the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping

import structlog

from ..errors import AuthError
from .source import ANONYMOUS, Credentials, Resolved, normalize_host, server_url

log = structlog.get_logger(__name__)

#: Seconds a credential helper may take to answer.
HELPER_TIMEOUT = 30.0
#: Seconds a helper's answer is reused before the helper is asked again.
HELPER_MAX_AGE = 300.0

_NOT_FOUND = "credentials not found"
_TOKEN_USERNAME = "<token>"
#: What a helper name may be: no path separators, no spaces.
HELPER_NAME_RE = re.compile(r"[^/\\\s]+")


def _safe_excerpt(text: str) -> str:
    """Return a helper's error message fit for an error, or a note that it was withheld."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if "{" in line or "secret" in line.lower():
        return "(output withheld: it may hold a secret)"
    return line[:200]


class HelperSource:
    """Asks the helper named for a host (a config's `helper: NAME`); other hosts: None."""

    def __init__(
        self,
        helpers: Mapping[str, str],
        *,
        timeout: float = HELPER_TIMEOUT,
        max_age: float = HELPER_MAX_AGE,
    ) -> None:
        """Name a helper per host (a name or URL); `max_age` bounds reuse of an answer."""
        self._helpers = {normalize_host(h): n for h, n in helpers.items()}
        self._timeout = timeout
        self._max_age = max_age

    async def credentials_for(self, host: str) -> Resolved | None:
        """Run the host's helper; its answer, even "not found" (anonymous), is final."""
        name = self._helpers.get(host)
        if name is None:
            return None
        creds = await run_helper(name, host, time_limit=self._timeout)
        return Resolved(creds, max_age=self._max_age, source=f"helper:{name}")


async def run_helper(name: str, host: str, *, time_limit: float = HELPER_TIMEOUT) -> Credentials:
    """Run `docker-credential-NAME get` with the server URL on stdin and parse its answer."""
    program = f"docker-credential-{name}"
    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            "get",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise AuthError(
            f"credential helper {program} (for {host}) is not installed or not on PATH"
        ) from None
    except OSError as e:
        raise AuthError(
            f"cannot run credential helper {program} (for {host}): {e.strerror or e}"
        ) from None
    try:
        async with asyncio.timeout(time_limit):
            out, err = await proc.communicate(server_url(host).encode())
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise AuthError(
            f"credential helper {program} did not answer for {host} within {time_limit:g} s"
        ) from None
    except BaseException:  # cancelled: leave no helper behind
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    stdout = out.decode("utf-8", "replace").strip()
    stderr = err.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        message = stdout or stderr
        if _NOT_FOUND in message.lower():
            return ANONYMOUS
        if not message and proc.returncode is not None and proc.returncode > 0:
            # Some helpers say "nothing for this host" by their exit status alone.
            log.debug("credential helper found nothing", helper=program, host=host)
            return ANONYMOUS
        raise AuthError(
            f"credential helper {program} failed for {host}"
            f" (exit status {proc.returncode}): {_safe_excerpt(message)}"
        )
    try:
        data = json.loads(stdout)
    except ValueError:
        if _NOT_FOUND in stdout.lower():
            return ANONYMOUS
        raise AuthError(
            f"credential helper {program} gave an answer for {host} that is not JSON"
        ) from None
    if not isinstance(data, dict):
        raise AuthError(
            f"credential helper {program} gave an answer for {host} that is not a JSON object"
        )
    username = data.get("Username") or ""
    secret = data.get("Secret") or ""
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthError(
            f"credential helper {program} gave an answer for {host}"
            " whose Username or Secret is not a string"
        )
    if username == _TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)
