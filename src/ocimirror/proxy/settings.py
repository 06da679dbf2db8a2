"""Settings of `ocimirror proxy`: serverless-registry-proxy's environment, flags, a YAML file.

The environment variables of serverless-registry-proxy configure one upstream, the default
(reached by every path): `REGISTRY_HOST`, `REPO_PREFIX`, `AUTH_HEADER` (a static
`Authorization` header sent on every upstream request), `DISABLE_BROWSER_REDIRECTS` (any
non-empty value, `false` too, as the original reads it) and `PORT`. Flags win over the
environment; the original's Go flags `-port=`, `-registeryHost=`, `-repoPrefix=` are
accepted too.

`--config FILE` adds upstreams (and client credentials) from YAML::

    default: hub              # optional: paths that name no upstream go there
    stream_blobs: false
    browser_redirects: true
    allow_private_redirects: false  # redirects followed only to public addresses
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
    cache:                    # the pull-through cache (or just `cache: /var/cache/proxy`)
      directory: /var/cache/ocimirror-proxy
      max_size: 20GiB         # least-recently-used blobs go beyond it
      tag_ttl: 5m             # a tag is revalidated upstream (HEAD) once older

or, with the blobs in an object store (`cache: s3://bucket/prefix` for short)::

    cache:
      store: s3://bucket/proxy-cache     # gs://, az://, file://, memory:// too
      options:                           # obstore's, for the store; AWS_* etc. work too
        endpoint: https://ACCOUNT.r2.cloudflarestorage.com
        region: auto
        secret_access_key: {env: R2_SECRET}
      directory: /var/lib/ocimirror-proxy  # its index and downloads (default: temporary)
      redirect: false                      # true: cached blobs by presigned URL (s3/gs/az)
      checksum: true                       # s3://: each upload carries its SHA-256

An upstream's host may be a bucket holding the registry layout (`s3://BUCKET[/PREFIX]`,
`r2://ACCOUNT/BUCKET`, `gs://`, `az://`, `file:///DIR`), served pull-only from it
(proxy/bucketupstream.py); its settings go under `bucket:` (endpoint, region,
credentials as a key pair, key prefix), else come from AWS_*, GOOGLE_*, AZURE_*, and
`redirect: true` (--bucket-redirect, $OCIMIRROR_PROXY_BUCKET_REDIRECT for REGISTRY_HOST)
sends blob GETs to presigned URLs.

The cache's flags and variables: `--cache DIR|URL` ($OCIMIRROR_PROXY_CACHE),
`--cache-local DIR` ($OCIMIRROR_PROXY_CACHE_LOCAL), `--cache-redirect`
($OCIMIRROR_PROXY_CACHE_REDIRECT), `--no-cache-checksum`
($OCIMIRROR_PROXY_CACHE_CHECKSUM=0), `--cache-max-size`
($OCIMIRROR_PROXY_CACHE_MAX_SIZE), `--tag-ttl` ($OCIMIRROR_PROXY_TAG_TTL).

Secrets (`auth_header`, `credentials.password`, `credentials.token`, `clients.tokens`,
`cache.options` values) are a string, `{env: NAME}` or `{file: PATH}`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError, ReferenceError
from ..reference import DOMAIN_RE, PATH_COMPONENT_RE, REPOSITORY_RE, split_bucket
from ..settings.durations import parse_interval
from ..settings.registries import Bucket, CredentialsConfig, Tls
from ..settings.secrets import Secret, coerce_secret
from ..settings.sizes import parse_size
from .cachestore import is_store_url

#: The port when neither --port nor $PORT says.
DEFAULT_PORT = 8080
#: Client tokens from the environment, comma-separated.
TOKENS_ENV = "OCIMIRROR_PROXY_TOKENS"
#: The cache directory, its size limit and the tag TTL from the environment.
CACHE_ENV = "OCIMIRROR_PROXY_CACHE"
CACHE_LOCAL_ENV = "OCIMIRROR_PROXY_CACHE_LOCAL"
CACHE_REDIRECT_ENV = "OCIMIRROR_PROXY_CACHE_REDIRECT"
CACHE_CHECKSUM_ENV = "OCIMIRROR_PROXY_CACHE_CHECKSUM"
#: The stores whose objects can be handed out as presigned URLs: by scheme, or by the host
#: of an https:// URL that obstore opens as S3 or Azure (R2 included).
SIGNING_SCHEMES = ("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "adl://")
SIGNING_HOSTS = (".amazonaws.com", ".r2.cloudflarestorage.com", ".blob.core.windows.net")
CACHE_MAX_SIZE_ENV = "OCIMIRROR_PROXY_CACHE_MAX_SIZE"
#: A bucket REGISTRY_HOST's blobs by presigned URL (--bucket-redirect).
BUCKET_REDIRECT_ENV = "OCIMIRROR_PROXY_BUCKET_REDIRECT"
TAG_TTL_ENV = "OCIMIRROR_PROXY_TAG_TTL"
#: Redirects the proxy follows may reach private addresses (--allow-private-redirects).
PRIVATE_REDIRECTS_ENV = "OCIMIRROR_PROXY_ALLOW_PRIVATE_REDIRECTS"
#: Seconds a cached tag is served without asking the upstream, unless configured.
DEFAULT_TAG_TTL = 300.0
_FALSE = frozenset({"", "0", "false", "no", "off"})

AuthMode = Literal["auto", "passthrough", "proxy"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret(value: Any) -> Any:
    """A secret as the sync config takes one, but `${ENV}` (expanded only there)."""
    return coerce_secret(value, forms="a string, {env: NAME} or {file: PATH}")


class UpstreamConfig(_Model):
    """One upstream registry: where it is, the repository prefix, and how to log in."""

    #: The first path component that routes to it (`/v2/NAME/...`); "" for the default.
    name: str = ""
    host: str
    prefix: str = ""
    #: containerd's `?ns=` values routed here (default: the host, `docker.io` for the Hub).
    namespaces: list[str] | None = None
    #: `host` naming a bucket (s3://, r2://, gs://, az://, file://): its settings (endpoint,
    #: region, key pair, key prefix); what they leave out comes from AWS_*, GOOGLE_*, AZURE_*.
    bucket: Bucket | None = None
    #: A bucket's blob GETs answered with a redirect to a presigned URL (s3, r2, gs, az).
    redirect: bool = False
    #: A static Authorization header for the upstream (serverless-registry-proxy's AUTH_HEADER).
    auth_header: Secret | None = None
    credentials: CredentialsConfig | None = None
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
        v = v.strip()
        try:
            if split_bucket(v) is not None:
                return v.rstrip("/")
        except ReferenceError as e:
            raise ValueError(str(e)) from None
        v = v.removeprefix("https://").removeprefix("http://").rstrip("/")
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

    @model_validator(mode="after")
    def _bucket_fields(self) -> UpstreamConfig:
        if self.is_bucket:
            if self.has_credentials:
                raise ValueError(
                    f"upstream {self.host}: a bucket's credentials come from `bucket:` or the"
                    " cloud's environment (AWS_*, GOOGLE_*, AZURE_*), not auth_header or"
                    " credentials"
                )
            if self.bucket is not None and self.bucket.public_read:
                raise ValueError(
                    f"upstream {self.host}: public_read is for copy targets (the proxy only"
                    " reads a bucket)"
                )
            if self.redirect and self.host.startswith("file:"):
                raise ValueError(
                    f"upstream {self.host}: redirect needs a bucket that can presign URLs"
                    " (s3://, r2://, gs://, az://), not a directory"
                )
        elif self.bucket is not None or self.redirect:
            raise ValueError(f"upstream {self.host}: bucket and redirect are for a bucket host")
        return self

    @property
    def is_bucket(self) -> bool:
        """Tell whether `host` names a bucket holding the registry layout."""
        return split_bucket(self.host) is not None

    @property
    def has_credentials(self) -> bool:
        """Tell whether the proxy has anything of its own to present upstream."""
        return self.auth_header is not None or self.credentials is not None


def parse_ttl(text: str | float) -> float:
    """Parse a tag TTL such as `5m`, `90s`, `1h` or a number of seconds."""
    return parse_interval(text).total_seconds()


class CacheConfig(_Model):
    """The pull-through cache: where (a directory, or an object store), size limit, tag TTL."""

    #: The cache directory; with a `store`, where its index and downloads in progress go
    #: (None: a temporary directory).
    directory: Path | None = None
    #: An object store URL for the blobs (s3://bucket/prefix, gs://, az://, file://, memory://).
    store: str | None = None
    #: obstore's options for the store (endpoint, region, access_key_id...), secrets allowed.
    options: dict[str, Secret] = {}
    #: Answer a GET of a cached blob with a redirect to a presigned URL of the store's
    #: object (s3://, gs://, az:// only), so the bytes go from the bucket to the client.
    redirect: bool = False
    #: s3://: send each upload's SHA-256 (`x-amz-checksum-sha256`) for the store to check, so
    #: a blob damaged on its way up is refused, not kept (off only for an S3-compatible
    #: store that refuses the header).
    checksum: bool = True
    #: Bytes kept at most (blobs and manifests); least recently used go first. None: no limit.
    max_size: int | None = None
    #: Seconds a cached tag is served before it is revalidated upstream with a HEAD.
    tag_ttl: float = DEFAULT_TAG_TTL

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser()

    @field_validator("store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v is not None and not is_store_url(v):
            raise ValueError(
                f"{v!r} is not an object store URL (s3://, gs://, az://, file://, memory://...)"
            )
        return v

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        return {str(k): _secret(_option_text(x)) for k, x in v.items()}

    @field_validator("max_size", mode="before")
    @classmethod
    def _max_size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)

    @field_validator("tag_ttl", mode="before")
    @classmethod
    def _tag_ttl(cls, v: Any) -> Any:
        return parse_ttl(v)

    @model_validator(mode="after")
    def _redirect_needs_signing(self) -> CacheConfig:
        problem = self.redirect_problem()
        if problem:
            raise ValueError(problem)
        return self

    def redirect_problem(self) -> str | None:
        """Say why `redirect` cannot work with this store; None when it can (or is off)."""
        if self.redirect and not (self.store and can_presign(self.store)):
            where = repr(self.store) if self.store else "a directory"
            return (
                f"redirect needs a store that can presign URLs: s3://, gs:// or az://, not {where}"
            )
        return None

    @property
    def enabled(self) -> bool:
        """Tell whether there is a cache."""
        return self.directory is not None or self.store is not None

    @property
    def where(self) -> str | None:
        """Name where the cache keeps blobs, for logs (None: no cache)."""
        return self.store or (str(self.directory) if self.directory is not None else None)

    def store_options(self) -> dict[str, str]:
        """Return the store's options with their secrets revealed (and, for s3:// with
        `checksum` on, `checksum_algorithm: sha256` unless the options name one)."""
        opts = {k: v.reveal() for k, v in self.options.items()}
        named = {k.lower().removeprefix("aws_") for k in opts}
        s3 = (self.store or "").startswith(("s3://", "s3a://"))
        if self.checksum and s3 and "checksum_algorithm" not in named:
            opts["checksum_algorithm"] = "sha256"
        return opts


def can_presign(url: str) -> bool:
    """Tell whether a store URL names a store that can presign URLs (S3, GCS, Azure)."""
    low = url.lower()
    if low.startswith(SIGNING_SCHEMES):
        return True
    host = low.removeprefix("https://").split("/", 1)[0] if low.startswith("https://") else ""
    return host.endswith(SIGNING_HOSTS)


def _option_text(value: Any) -> Any:
    """A store option as obstore reads it: `true`/`false`, numbers as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def _cache_shorthand(value: Any) -> Any:
    """Accept `cache: DIR` for `cache: {directory: DIR}`, `cache: URL` for `{store: URL}`."""
    if isinstance(value, str) and is_store_url(value):
        return {"store": value}
    return {"directory": value} if isinstance(value, str | Path) else value


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


class _ProxyOptions(_Model):
    """What the YAML file and the settings share: the upstreams and how they are served."""

    upstreams: list[UpstreamConfig] = []
    #: The name of the upstream for paths that name none (None: such paths are unknown).
    default: str | None = None
    stream_blobs: bool = False
    browser_redirects: bool = True
    #: Redirects the proxy follows (`stream_blobs`, the cache's fetches) may lead to
    #: loopback, private and link-local addresses (else public ones only).
    allow_private_redirects: bool = False
    clients: ClientAuth = ClientAuth()
    cache: CacheConfig = CacheConfig()


class ProxyFile(_ProxyOptions):
    """The YAML file given with --config."""

    coerce_cache = field_validator("cache", mode="before")(_cache_shorthand)


class ProxySettings(_ProxyOptions):
    """Everything `ocimirror proxy` runs with."""

    upstreams: list[UpstreamConfig]  # required here: at least one (`_check`)
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"

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
    cache: str | None = None,
    cache_local: Path | None = None,
    cache_redirect: bool | None = None,
    cache_checksum: bool | None = None,
    cache_max_size: str | None = None,
    tag_ttl: str | None = None,
    bucket_redirect: bool | None = None,
    allow_private_redirects: bool | None = None,
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
        creds: CredentialsConfig | None = None
        if authfile is not None:
            creds = CredentialsConfig(docker_config=authfile)
        elif keychain:
            creds = CredentialsConfig(docker_config=True)
        elif auth_header is None and env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            # serverless-registry-proxy: the key file's identity logs in to a Google host.
            from ..auth.providers import detect

            if detect(reg_host) == "gcp":
                creds = CredentialsConfig(provider="gcp")
        redirect = bucket_redirect
        if redirect is None:
            redirect = env_flag(env.get(BUCKET_REDIRECT_ENV))
        try:
            upstreams.append(
                UpstreamConfig(
                    host=reg_host,
                    prefix=prefix,
                    auth_header=Secret(value=auth_header) if auth_header else None,
                    credentials=creds,
                    redirect=redirect,
                )
            )
        except ValidationError as e:
            raise ConfigError(f"REGISTRY_HOST / REPO_PREFIX: {_problems(e)}") from None
        default = ""
    elif bucket_redirect:
        raise ConfigError("--bucket-redirect is for a bucket REGISTRY_HOST (--registry-host)")
    elif auth_header is not None and len(upstreams) == 1 and upstreams[0].auth_header is None:
        upstreams[0] = upstreams[0].model_copy(update={"auth_header": Secret(value=auth_header)})
    elif any(u.name == "" for u in upstreams):
        default = ""
    clients = file.clients
    tokens = [*clients.tokens, *(Secret(value=t) for t in client_tokens if t)]
    tokens += [Secret(value=t.strip()) for t in env.get(TOKENS_ENV, "").split(",") if t.strip()]
    clients = ClientAuth(tokens=tokens, htpasswd=htpasswd or clients.htpasswd)
    # Set to anything, `false` and `0` included, as the original reads it (`!= ""`).
    redirects = file.browser_redirects and not env.get("DISABLE_BROWSER_REDIRECTS")
    if disable_browser_redirects is not None:
        redirects = not disable_browser_redirects
    streaming = file.stream_blobs or env_flag(env.get("STREAM_BLOBS"))
    if stream_blobs is not None:
        streaming = stream_blobs
    private_redirects = file.allow_private_redirects or env_flag(env.get(PRIVATE_REDIRECTS_ENV))
    if allow_private_redirects is not None:
        private_redirects = allow_private_redirects
    cache_config = _cache_config(
        file.cache, cache, cache_local, cache_max_size, tag_ttl, env, cache_redirect, cache_checksum
    )
    try:
        return ProxySettings(
            port=port_from(port, env),
            host=host or "0.0.0.0",
            upstreams=upstreams,
            default=default,
            stream_blobs=streaming,
            browser_redirects=redirects,
            allow_private_redirects=private_redirects,
            clients=clients,
            cache=cache_config,
        )
    except ValidationError as e:
        raise ConfigError(_problems(e)) from None


def _cache_config(
    file: CacheConfig,
    where: str | None,
    local: Path | None,
    max_size: str | None,
    tag_ttl: str | None,
    env: Mapping[str, str],
    redirect: bool | None = None,
    checksum: bool | None = None,
) -> CacheConfig:
    """Merge the cache's flags, environment and config file (in that order of precedence)."""
    update: dict[str, Any] = {}
    if checksum is None and env.get(CACHE_CHECKSUM_ENV, "").strip():
        checksum = env_flag(env.get(CACHE_CHECKSUM_ENV))
    if checksum is not None:
        update["checksum"] = checksum
    if redirect is None and env.get(CACHE_REDIRECT_ENV, "").strip():
        redirect = env_flag(env.get(CACHE_REDIRECT_ENV))
    if redirect is not None:
        update["redirect"] = redirect
    where = where or env.get(CACHE_ENV, "").strip() or None
    if where is not None:
        if is_store_url(where):
            update["store"] = where
            update["directory"] = file.directory if file.store else None
        else:
            update.update(store=None, directory=Path(where).expanduser())
    local = local or (Path(v) if (v := env.get(CACHE_LOCAL_ENV, "").strip()) else None)
    if local is not None:
        if not (update.get("store") or (file.store and "store" not in update)):
            raise ConfigError(
                "--cache-local ($OCIMIRROR_PROXY_CACHE_LOCAL) is for an object-store cache:"
                " --cache names a directory, or nothing"
            )
        update["directory"] = local.expanduser()
    size = max_size if max_size is not None else env.get(CACHE_MAX_SIZE_ENV, "").strip() or None
    ttl = tag_ttl if tag_ttl is not None else env.get(TAG_TTL_ENV, "").strip() or None
    try:
        if size is not None:
            update["max_size"] = parse_size(size)
        if ttl is not None:
            update["tag_ttl"] = parse_ttl(ttl)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    merged = file.model_copy(update=update) if update else file
    problem = merged.redirect_problem()
    if problem:
        raise ConfigError(f"--cache-redirect: {problem}")
    return merged
