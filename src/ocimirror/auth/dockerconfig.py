"""Docker's and podman's auth files as a credential source.

For each auth file in turn (see below), the first that has something for the host:

a. `credHelpers[host]`: ask `docker-credential-NAME get`;
b. an `auths` entry for the host (`auth` = base64 "user:password", or `username` /
   `password`, plus `identitytoken` and `registrytoken`); entries with nothing in them
   (docker writes `{}` when the secret lives in `credsStore`) are skipped;
c. `credsStore`: ask `docker-credential-NAME get`.

The auth files, in order:

- `config_path` when given (an explicit `--authfile`): that file alone, as with skopeo's
  `--authfile` and docker's `--config`; it must exist (a directory means its
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
host. The files are read when the source is made (a broken one is a ConfigError) and
again when one of them has changed by the time credentials are looked up (a `docker
login` while a daemon runs; a file broken then is logged and the last good read kept).
The keychain reuses a helper's answer for `HELPER_MAX_AGE` seconds, an `auths` entry
until a registry refuses it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..errors import ConfigError
from ..reference import DOCKER_HUB, DOCKER_HUB_ALIASES
from .helper import HELPER_MAX_AGE, HELPER_NAME_RE, HELPER_TIMEOUT, run_helper
from .source import DOCKER_HUB_SERVER, Credentials, Resolved, normalize_host

log = structlog.get_logger(__name__)

#: The auth-file keys that hold Docker Hub's credentials, most preferred first: docker's own
#: server URL (what `docker login` writes), ocimirror's name, then the other aliases.
_HUB_KEYS = (DOCKER_HUB_SERVER, DOCKER_HUB, *sorted(DOCKER_HUB_ALIASES - {DOCKER_HUB}))


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
    if not isinstance(name, str) or (name and not HELPER_NAME_RE.fullmatch(name)):
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


def _stamps(candidates: list[tuple[Path, bool]]) -> list[tuple[int, int, int] | None]:
    """Return each file's (mtime, size, inode), None when absent: what tells that one
    changed. The inode catches a file replaced by a rename (a rotated Kubernetes secret)
    with the same size within the file system's mtime tick."""
    out: list[tuple[int, int, int] | None] = []
    for path, _ in candidates:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return out


def _load_all(candidates: list[tuple[Path, bool]]) -> list[_AuthFile]:
    return [f for p, required in candidates if (f := _load_auth_file(p, required=required))]


class DockerConfigSource:
    """Credentials from docker's and podman's auth files (and the helpers they name)."""

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        helper_timeout: float = HELPER_TIMEOUT,
        helper_max_age: float = HELPER_MAX_AGE,
    ) -> None:
        """Read the auth files now (a broken one is a ConfigError); see the module's doc."""
        if config_path is not None:
            path = Path(config_path).expanduser()
            if path.is_dir():
                path = path / "config.json"
            candidates = [(path, True)]
        else:
            candidates = _default_paths()
        self._candidates = candidates
        self._stamps = _stamps(candidates)
        self._files = _load_all(candidates)
        self._helper_timeout = helper_timeout
        self._helper_max_age = helper_max_age

    @property
    def paths(self) -> list[Path]:
        """Return the auth files that exist and are consulted, in order."""
        return [f.path for f in self._files]

    async def credentials_for(self, host: str) -> Resolved | None:
        """Return the first file's credentials for `host`; None when no file has any."""
        self._reload_if_changed()
        for auth_file in self._files:
            found = await self._from_file(auth_file, host)
            if found is not None and not found.credentials.anonymous:
                log.debug("credentials found", host=host, source=found.source)
                return found
        return None

    def _reload_if_changed(self) -> None:
        stamps = _stamps(self._candidates)
        if stamps == self._stamps:
            return
        try:
            self._files = _load_all(self._candidates)
        except ConfigError as e:
            log.warning("auth file changed but cannot be read, keeping the last read", error=str(e))
            return
        self._stamps = stamps
        log.info("auth files read again", paths=[str(f.path) for f in self._files])

    async def _from_file(self, auth_file: _AuthFile, host: str) -> Resolved | None:
        """Look `host` up in one file: its credHelpers, its auths, then its credsStore."""
        where = str(auth_file.path)
        for key in _matching_keys(auth_file.cred_helpers, host):
            helper = auth_file.cred_helpers[key]
            if helper:  # docker treats an empty helper name as none
                return await self._helper(helper, host, f"{where} credHelpers:{helper}")
        for key in _matching_keys(auth_file.auths, host):
            creds = _entry_credentials(auth_file.auths[key], key, auth_file.path)
            if not creds.anonymous:
                return Resolved(creds, source=f"{where} auths:{key}")
        if auth_file.creds_store:
            store = auth_file.creds_store
            return await self._helper(store, host, f"{where} credsStore:{store}")
        return None

    async def _helper(self, name: str, host: str, source: str) -> Resolved:
        creds = await run_helper(name, host, time_limit=self._helper_timeout)
        return Resolved(creds, max_age=self._helper_max_age, source=source)
