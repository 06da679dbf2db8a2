"""Settings of `ocimirror proxy`: serverless-registry-proxy's environment, flags, a YAML file.

The environment variables of serverless-registry-proxy configure one upstream, the default
(reached by every path): `REGISTRY_HOST`, `REPO_PREFIX`, `AUTH_HEADER` (a static
`Authorization` header for the upstream), `DISABLE_BROWSER_REDIRECTS` (any non-empty value
but `0`/`false`/`no`/`off`) and `PORT`. Flags win over the environment.

`--config FILE` adds upstreams (and client credentials) from YAML::

    default: hub              # optional: paths that name no upstream go there
    stream_blobs: false
    browser_redirects: true
    upstreams:
      - name: hub             # routes /v2/hub/... (and ?ns=docker.io from containerd)
        host: docker.io
      - name: ghcr
        host: ghcr.io
        prefix: myorg         # /v2/ghcr/app -> ghcr.io/myorg/app
        credentials: {docker_config: true}
    clients:
      tokens: [{env: PROXY_TOKEN}]
      htpasswd: /etc/ocimirror/htpasswd

Secrets (`auth_header`, `credentials.password`, `credentials.token`, `clients.tokens`) are
a string, `{env: NAME}` or `{file: PATH}`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..reference import DOMAIN_RE, PATH_COMPONENT_RE, REPOSITORY_RE
from ..sync.config import Credentials, Secret, Tls

#: The port when neither --port nor $PORT says.
DEFAULT_PORT = 8080
#: Client tokens from the environment, comma-separated.
TOKENS_ENV = "OCIMIRROR_PROXY_TOKENS"
_FALSE = frozenset({"", "0", "false", "no", "off"})

AuthMode = Literal["auto", "passthrough", "proxy"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret(value: Any) -> Any:
    """Accept `"text"`, `{env: NAME}` or `{file: PATH}` for a secret."""
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value=value)
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = str(value["env"])
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return Secret(value=os.environ[name])
    if isinstance(value, Mapping) and set(value) == {"file"}:
        return Secret(file=Path(str(value["file"])).expanduser())
    raise ValueError("a secret is a string, {env: NAME} or {file: PATH}")


class UpstreamConfig(_Model):
    """One upstream registry: where it is, the repository prefix, and how to log in."""

    #: The first path component that routes to it (`/v2/NAME/...`); "" for the default.
    name: str = ""
    host: str
    prefix: str = ""
    #: containerd's `?ns=` values routed here (default: the host, `docker.io` for the Hub).
    namespaces: list[str] | None = None
    #: A static Authorization header for the upstream (serverless-registry-proxy's AUTH_HEADER).
    auth_header: Secret | None = None
    credentials: Credentials | None = None
    #: Seconds before credentials from a helper or auth file are looked up again.
    credentials_refresh: float = Field(default=300.0, gt=0)
    #: `passthrough`: clients' own tokens; `proxy`: the proxy logs in; `auto`: proxy if it
    #: has credentials (or clients must log in to the proxy), else passthrough.
    auth: AuthMode = "auto"
    tls: Tls = Tls()

    coerce_secrets = field_validator("auth_header", mode="before")(_secret)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v and not PATH_COMPONENT_RE.fullmatch(v):
            raise ValueError(f"upstream name {v!r} must be one lowercase path component")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        if not DOMAIN_RE.fullmatch(v):
            raise ValueError(f"invalid registry host {v!r}")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if v and not REPOSITORY_RE.fullmatch(v):
            raise ValueError(f"invalid repository prefix {v!r}")
        return v

    @property
    def has_credentials(self) -> bool:
        """Tell whether the proxy has anything of its own to present upstream."""
        return self.auth_header is not None or self.credentials is not None


class ClientAuth(_Model):
    """Credentials clients must present to the proxy (none: the proxy is open)."""

    tokens: list[Secret] = []
    htpasswd: Path | None = None

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        return [_secret(t) for t in v] if isinstance(v, list) else v

    @property
    def enabled(self) -> bool:
        """Tell whether clients must authenticate."""
        return bool(self.tokens) or self.htpasswd is not None


class ProxyFile(_Model):
    """The YAML file given with --config."""

    upstreams: list[UpstreamConfig] = []
    default: str | None = None
    stream_blobs: bool = False
    browser_redirects: bool = True
    clients: ClientAuth = ClientAuth()


class ProxySettings(_Model):
    """Everything `ocimirror proxy` runs with."""

    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    upstreams: list[UpstreamConfig]
    #: The name of the upstream for paths that name none (None: such paths are unknown).
    default: str | None = None
    stream_blobs: bool = False
    browser_redirects: bool = True
    clients: ClientAuth = ClientAuth()

    @model_validator(mode="after")
    def _check(self) -> ProxySettings:
        if not self.upstreams:
            raise ValueError("no upstream: set REGISTRY_HOST (or --registry-host) or --config")
        names = [u.name for u in self.upstreams]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            which = ", ".join(repr(d) for d in dupes)
            raise ValueError(f"several upstreams are named {which}")
        if self.default is not None and self.default not in names:
            raise ValueError(f"the default upstream {self.default!r} is not configured")
        return self

    @property
    def default_upstream(self) -> UpstreamConfig | None:
        """Return the upstream for paths that name none."""
        return next((u for u in self.upstreams if u.name == self.default), None)


def env_flag(value: str | None) -> bool:
    """Read a boolean environment variable the way serverless-registry-proxy does (set = on)."""
    return value is not None and value.strip().lower() not in _FALSE


def port_from(port: int | None, env: Mapping[str, str]) -> int:
    """--port, else $PORT, else 8080."""
    if port is not None:
        return port
    text = env.get("PORT", "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"PORT={text!r} is not a port number")
    return int(text)


def read_config(path: Path) -> ProxyFile:
    """Read and validate a proxy YAML file; a ConfigError names every problem."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    try:
        return ProxyFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (misspelt?)"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def load_settings(
    *,
    port: int | None = None,
    host: str | None = None,
    registry_host: str | None = None,
    repo_prefix: str | None = None,
    config: Path | None = None,
    stream_blobs: bool | None = None,
    disable_browser_redirects: bool | None = None,
    keychain: bool = False,
    authfile: Path | None = None,
    client_tokens: Sequence[str] = (),
    htpasswd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ProxySettings:
    """Merge the flags (when given), the environment and the config file into settings."""
    env = os.environ if env is None else env
    file = read_config(config) if config is not None else ProxyFile()
    upstreams = list(file.upstreams)
    reg_host = registry_host or env.get("REGISTRY_HOST", "").strip() or None
    prefix = repo_prefix if repo_prefix is not None else env.get("REPO_PREFIX", "")
    auth_header = env.get("AUTH_HEADER", "").strip() or None
    default = file.default
    if reg_host is None and prefix.strip("/"):
        raise ConfigError("REPO_PREFIX (--repo-prefix) needs REGISTRY_HOST (--registry-host)")
    if reg_host is not None:
        if any(u.name == "" for u in upstreams) or default is not None:
            raise ConfigError(
                "REGISTRY_HOST (--registry-host) names the default upstream, but the config"
                " has one too"
            )
        creds: Credentials | None = None
        if authfile is not None:
            creds = Credentials(docker_config=authfile)
        elif keychain:
            creds = Credentials(docker_config=True)
        try:
            upstreams.append(
                UpstreamConfig(
                    host=reg_host,
                    prefix=prefix,
                    auth_header=Secret(value=auth_header) if auth_header else None,
                    credentials=creds,
                )
            )
        except ValidationError as e:
            raise ConfigError(f"REGISTRY_HOST / REPO_PREFIX: {_problems(e)}") from None
        default = ""
    elif auth_header is not None and len(upstreams) == 1 and upstreams[0].auth_header is None:
        upstreams[0] = upstreams[0].model_copy(update={"auth_header": Secret(value=auth_header)})
    elif any(u.name == "" for u in upstreams):
        default = ""
    clients = file.clients
    tokens = [*clients.tokens, *(Secret(value=t) for t in client_tokens if t)]
    tokens += [Secret(value=t.strip()) for t in env.get(TOKENS_ENV, "").split(",") if t.strip()]
    clients = ClientAuth(tokens=tokens, htpasswd=htpasswd or clients.htpasswd)
    redirects = file.browser_redirects and not env_flag(env.get("DISABLE_BROWSER_REDIRECTS"))
    if disable_browser_redirects is not None:
        redirects = not disable_browser_redirects
    streaming = file.stream_blobs or env_flag(env.get("STREAM_BLOBS"))
    if stream_blobs is not None:
        streaming = stream_blobs
    try:
        return ProxySettings(
            port=port_from(port, env),
            host=host or "0.0.0.0",
            upstreams=upstreams,
            default=default,
            stream_blobs=streaming,
            browser_redirects=redirects,
            clients=clients,
        )
    except ValidationError as e:
        raise ConfigError(_problems(e)) from None
