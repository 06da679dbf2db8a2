"""Find the credentials to present to a registry, the way docker and skopeo do.

`Keychain.resolve(host)` answers, for one registry host, with the first of:

1. an override given on the command line (`--src-creds`, `--src-token`, ...);
2. for each auth file in turn (see below), the first that has something for the host:
   a. `credHelpers[host]`: ask `docker-credential-NAME get`;
   b. an `auths` entry for the host (`auth` = base64 "user:password", or `username` /
      `password`, plus `identitytoken` and `registrytoken`); entries with nothing in
      them (docker writes `{}` when the secret lives in `credsStore`) are skipped;
   c. `credsStore`: ask `docker-credential-NAME get`;
3. otherwise anonymous `Credentials()`.

The auth files, in order:

- `config_path` when given (an explicit `--authfile`): that file alone, as with
  skopeo's `--authfile` and docker's `--config`; it must exist (a directory means its
  `config.json`).
- Otherwise every one of these that exists, the first that yields credentials winning:
  `$REGISTRY_AUTH_FILE` (an explicit choice for podman and skopeo, so it comes first; unlike
  skopeo it does not hide the others), `$DOCKER_CONFIG/config.json` or else
  `~/.docker/config.json` (docker's own), `$XDG_RUNTIME_DIR/containers/auth.json` and
  `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json` (where `podman login` writes).
  The legacy `~/.dockercfg` is not read.

Hosts match as in docker: Docker Hub's names (`docker.io`, `index.docker.io`,
`registry-1.docker.io`, `registry.hub.docker.com`; see `reference.is_docker_hub`) and
`https://index.docker.io/v1/` are one Docker Hub; keys may be URLs (`https://host:5000`,
`http://host/v2/`) and count as their `host[:port]`. Keys scoped to a repository or
namespace (`quay.io/org`, which podman can write) are ignored: credentials here are per
host. Secrets never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..errors import AuthError, ConfigError
from ..reference import DOCKER_HUB, DOCKER_HUB_ALIASES
from .source import (
    ANONYMOUS,
    DOCKER_HUB_SERVER,
    Credentials,
    CredentialSource,
    Resolved,
    normalize_host,
    parse_user_pass,
    server_url,
)

log = structlog.get_logger(__name__)

#: Seconds before an announced expiry at which credentials are asked for again.
REFRESH_MARGIN = 60.0
#: Seconds a credential helper may take to answer.
HELPER_TIMEOUT = 30.0

#: The auth-file keys that hold Docker Hub's credentials, most preferred first: docker's own
#: server URL (what `docker login` writes), ocimirror's name, then the other aliases.
_HUB_KEYS = (DOCKER_HUB_SERVER, DOCKER_HUB, *sorted(DOCKER_HUB_ALIASES - {DOCKER_HUB}))
_NOT_FOUND = "credentials not found"
_TOKEN_USERNAME = "<token>"
_HELPER_NAME_RE = re.compile(r"[^/\\\s]+")


def _key_host(key: str) -> str | None:
    """Return the host an auth-file key stands for, or None for a repository-scoped key."""
    stripped = key.strip()
    has_scheme = stripped.lower().startswith(("https://", "http://"))
    if not has_scheme:
        _, _, path = stripped.partition("/")
        if path.strip("/") not in ("", "v1", "v2"):
            return None  # "quay.io/org": podman's namespace-scoped entry
    return normalize_host(stripped)


def _matching_keys(keys: Iterable[str], host: str) -> list[str]:
    """Return the keys that stand for `host`: exact spellings first, then normalised ones."""
    keys = list(keys)
    preferred = _HUB_KEYS if host == DOCKER_HUB else (host,)
    exact = [k for k in preferred if k in keys]
    return exact + [k for k in keys if k not in exact and _key_host(k) == host]


@dataclass(frozen=True)
class _AuthFile:
    """The parts of one docker config.json / containers auth.json that hold credentials."""

    path: Path
    auths: Mapping[str, Mapping[str, Any]]
    cred_helpers: Mapping[str, str]
    creds_store: str


def _load_auth_file(path: Path, *, required: bool) -> _AuthFile | None:
    """Read and check an auth file; None when it is absent and not `required`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"auth file {path} does not exist") from None
        return None
    except OSError as e:
        raise ConfigError(f"cannot read auth file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"auth file {path} is not UTF-8 (byte {e.start})") from None
    if not text.strip():
        return _AuthFile(path, {}, {}, "")  # docker accepts an empty file
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # The message names the position only: the document may hold secrets.
        raise ConfigError(
            f"auth file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"auth file {path} must hold a JSON object")
    auths = _or_empty(data.get("auths"), {})
    if not isinstance(auths, dict):
        raise ConfigError(f"auth file {path}: 'auths' must be an object")
    for key, entry in auths.items():
        if entry is not None and not isinstance(entry, dict):
            raise ConfigError(f"auth file {path}: auths entry {key!r} must be an object")
    helpers = _or_empty(data.get("credHelpers"), {})
    if not isinstance(helpers, dict):
        raise ConfigError(f"auth file {path}: 'credHelpers' must be an object")
    for key, name in helpers.items():
        _check_helper_name(name, f"credHelpers entry {key!r}", path)
    store = _or_empty(data.get("credsStore"), "")
    _check_helper_name(store, "'credsStore'", path)
    return _AuthFile(path, {k: v or {} for k, v in auths.items()}, helpers, store)


def _or_empty(value: object, empty: object) -> Any:
    """Return `value`, or `empty` when it is null (docker writes nulls for absent parts)."""
    return empty if value is None else value


def _check_helper_name(name: object, what: str, path: Path) -> None:
    if not isinstance(name, str) or (name and not _HELPER_NAME_RE.fullmatch(name)):
        raise ConfigError(f"auth file {path}: {what} must be a credential helper name")


def _entry_credentials(entry: Mapping[str, Any], key: str, path: Path) -> Credentials:
    """Turn one `auths` entry into Credentials (anonymous when it holds nothing)."""
    fields: dict[str, str] = {}
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        value = _or_empty(entry.get(name), "")
        if not isinstance(value, str):
            raise ConfigError(f"auth file {path}: '{name}' of {key!r} must be a string")
        fields[name] = value
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        username, password = _decode_auth(fields["auth"], key, path)
    return Credentials(
        username=username,
        password=password,
        identity_token=fields["identitytoken"],
        registry_token=fields["registrytoken"],
    )


def _decode_auth(auth: str, key: str, path: Path) -> tuple[str, str]:
    """Decode an `auth` field, base64 of "user:password"."""
    raw = auth.strip()
    try:
        decoded = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    username, sep, password = decoded.partition(":")
    if not sep:
        raise ConfigError(f"auth file {path}: the 'auth' of {key!r} is not base64 of USER:PASSWORD")
    return username, password


def _default_paths() -> list[tuple[Path, bool]]:
    """Return the auth files searched when no config_path is given, with required=False."""
    env = os.environ
    paths: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]).expanduser())
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]).expanduser() / "config.json")
    else:
        paths.append(Path.home() / ".docker" / "config.json")
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else None
    paths.append((config_home or Path.home() / ".config") / "containers" / "auth.json")
    unique = list(dict.fromkeys(paths))
    return [(p, False) for p in unique]


def _safe_excerpt(text: str) -> str:
    """Return a helper's error message fit for an error, or a note that it was withheld."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if "{" in line or "secret" in line.lower():
        return "(output withheld: it may hold a secret)"
    return line[:200]


class Keychain:
    """Resolves credentials for a registry host."""

    def __init__(
        self,
        *,
        config_path: str | Path | None = None,
        overrides: Mapping[str, Credentials] | None = None,
        helpers: Mapping[str, str] | None = None,
        helper_timeout: float = HELPER_TIMEOUT,
        cloud_sources: Sequence[CredentialSource] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Read the auth files now (a broken one is a ConfigError); `overrides` win.

        `helpers` names a `docker-credential-NAME` helper per host, ahead of the files;
        `cloud_sources` (auth/providers.py) come after the files (as go-containerregistry
        puts its cloud keychains after docker's), and their answers are asked again
        shortly before they expire (on `clock`).
        """
        if config_path is not None:
            path = Path(config_path).expanduser()
            if path.is_dir():
                path = path / "config.json"
            candidates = [(path, True)]
        else:
            candidates = _default_paths()
        self._files = [
            f for p, required in candidates if (f := _load_auth_file(p, required=required))
        ]
        self._overrides = {normalize_host(h): c for h, c in (overrides or {}).items()}
        self._helpers = {normalize_host(h): n for h, n in (helpers or {}).items()}
        self._helper_timeout = helper_timeout
        self._cloud_sources = list(cloud_sources)
        self._clock = clock
        self._cache: dict[str, Credentials] = {}
        #: When a cached answer goes stale (answers with an expiry only).
        self._stale_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def paths(self) -> list[Path]:
        """Return the auth files that exist and are consulted, in order."""
        return [f.path for f in self._files]

    async def resolve(self, host: str) -> Credentials:
        """Return the credentials for `host` (a name or URL), anonymous when none."""
        key = normalize_host(host)
        if key in self._overrides:
            return self._overrides[key]
        if self._fresh(key):
            return self._cache[key]
        async with self._locks.setdefault(key, asyncio.Lock()):
            if not self._fresh(key):
                self._stale_at.pop(key, None)
                self._cache[key] = await self._lookup(key)
            return self._cache[key]

    def _fresh(self, key: str) -> bool:
        stale_at = self._stale_at.get(key)
        return key in self._cache and (stale_at is None or self._clock() < stale_at)

    async def _lookup(self, host: str) -> Credentials:
        if host in self._helpers:
            return await self._run_helper(self._helpers[host], host)
        for auth_file in self._files:
            creds, how = await self._from_file(auth_file, host)
            if not creds.anonymous:
                log.debug("credentials found", host=host, source=str(auth_file.path), via=how)
                return creds
        for source in self._cloud_sources:
            answer = await source.credentials_for(host)
            if answer is not None:
                if answer.expires_at is not None:
                    now = self._clock()
                    left = max(answer.expires_at - now, 0.0)
                    # Renewed a minute before expiry; short-lived ones halfway through.
                    self._stale_at[host] = answer.expires_at - min(REFRESH_MARGIN, left / 2)
                log.debug("credentials resolved", host=host, source=answer.source)
                return answer.credentials
        log.debug("no credentials: anonymous", host=host)
        return ANONYMOUS

    async def _from_file(self, auth_file: _AuthFile, host: str) -> tuple[Credentials, str]:
        """Look `host` up in one file: its credHelpers, its auths, then its credsStore."""
        for key in _matching_keys(auth_file.cred_helpers, host):
            helper = auth_file.cred_helpers[key]
            if helper:  # docker treats an empty helper name as none
                return await self._run_helper(helper, host), f"credHelpers:{helper}"
        for key in _matching_keys(auth_file.auths, host):
            creds = _entry_credentials(auth_file.auths[key], key, auth_file.path)
            if not creds.anonymous:
                return creds, f"auths:{key}"
        if auth_file.creds_store:
            store = auth_file.creds_store
            return await self._run_helper(store, host), f"credsStore:{store}"
        return ANONYMOUS, ""

    async def _run_helper(self, name: str, host: str) -> Credentials:
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
            async with asyncio.timeout(self._helper_timeout):
                out, err = await proc.communicate(server_url(host).encode())
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise AuthError(
                f"credential helper {program} did not answer for {host}"
                f" within {self._helper_timeout:g} s"
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


__all__ = [
    "ANONYMOUS",
    "DOCKER_HUB_SERVER",
    "HELPER_TIMEOUT",
    "REFRESH_MARGIN",
    "CredentialSource",
    "Credentials",
    "Keychain",
    "Resolved",
    "normalize_host",
    "parse_user_pass",
    "server_url",
]
