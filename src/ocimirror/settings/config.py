"""The mirror configuration file (sync, `run`, `serve -c`): its models.

A config file is YAML (or JSON). Two other formats are read as they are: docker-sync's
YAML and Docker Mirror Image's `config.ini` (see `compat`).

The models are here; reading a file into them (YAML parsed once, `${VAR}` expanded, every
error positioned) is `settings.loading`'s.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError, ReferenceError
from ..reference import Reference
from ..transfer.options import parse_platforms, tag_filter
from ..transfer.tags import TagFilter
from .registries import Bucket, Registry
from .secrets import Secret, coerce_secret

if TYPE_CHECKING:
    from ..transfer.referreroptions import ReferrerOptions

#: How long a mirror with `trust_state` trusts the state before looking at every target.
DEFAULT_VERIFY_EVERY = timedelta(hours=24)


class _Model(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Tags(_Model):
    """Which tags of a repository to mirror (see `TagFilter`)."""

    exact: list[str] = []
    include: list[str] = []
    exclude: list[str] = []
    semver: str | None = None
    latest: int | None = Field(default=None, ge=1)

    @field_validator("exact", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        if isinstance(v, str | int | float):
            v = [v]
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _compiles(self) -> Tags:
        self.filter()  # raises ValueError with the regex or range at fault
        return self

    def filter(self) -> TagFilter:
        """Return the TagFilter these settings describe."""
        try:
            chosen = tag_filter(
                all_tags=True,  # a mirror of a repository always selects from its tags
                tags=self.exact,
                include=self.include,
                exclude=self.exclude,
                semver=self.semver,
                latest=self.latest,
            )
        except ConfigError as e:
            raise ValueError(str(e)) from None
        assert chosen is not None
        return chosen

    @property
    def empty(self) -> bool:
        """Tell whether no filter is set (then every tag is mirrored)."""
        return self == Tags()


class Referrers(_Model):
    """Signatures, SBOMs and attestations copied with each image (see docs/referrers.md)."""

    enabled: bool = True
    include: list[str] = []
    exclude: list[str] = []
    require_signed: bool = False
    check_immutable: bool = False
    #: Trust the last pass's look at an unchanged tag for this long (`6h`; needs state).
    check_interval: str | int | None = None

    @model_validator(mode="after")
    def _valid(self) -> Referrers:
        self.options()  # raises ValueError naming what is wrong
        return self

    def options(self) -> ReferrerOptions:
        """Return the ReferrerOptions these settings describe."""
        from ..transfer.referreroptions import ReferrerOptions
        from .durations import parse_interval

        try:
            return ReferrerOptions(
                enabled=self.enabled,
                include=tuple(self.include),
                exclude=tuple(self.exclude),
                require_signed=self.require_signed,
                check_immutable=self.check_immutable,
                check_interval=(
                    None
                    if self.check_interval is None
                    else parse_interval(self.check_interval).total_seconds()
                ),
            )
        except ConfigError as e:
            raise ValueError(str(e)) from None


def _reference(text: str) -> str:
    try:
        Reference.parse(text)
    except ReferenceError as e:
        raise ValueError(str(e)) from None
    return text


class MirrorSettings(_Model):
    """What a mirror may inherit from the top-level `defaults` block."""

    tags: Tags | None = None
    platforms: list[str] | None = None
    immutable_tags: list[str] | None = None
    mutable_tags: list[str] | None = None
    schedule: str | int | None = None
    include_foreign: bool | None = None
    referrers: Referrers | None = None
    #: Skip the target HEAD of a tag the state database says was written there (see README).
    trust_state: bool | None = None
    #: How long the state is trusted before a pass looks at every target again (24h).
    verify_every: str | int | None = None

    @field_validator("verify_every")
    @classmethod
    def _verify_every(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            from .durations import parse_interval

            parse_interval(v)
        return v

    @property
    def verify_interval(self) -> timedelta:
        """How long the state is trusted (`verify_every`, 24 hours by default)."""
        if self.verify_every is None:
            return DEFAULT_VERIFY_EVERY
        from .durations import parse_interval

        return parse_interval(self.verify_every)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            from .schedule import Schedule

            Schedule.parse(v)
        return v

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v: list[str] | None) -> list[str] | None:
        try:
            parse_platforms(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v


class Mirror(MirrorSettings):
    """One mirror: a source (image, repository or list) copied to one or more targets."""

    name: str | None = None
    source: str | list[str]
    targets: list[str] = Field(min_length=1)
    #: Delete target tags the source no longer has (only tags this mirror selects).
    purge: bool = False

    @field_validator("targets", mode="before")
    @classmethod
    def _one_target(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("source")
    @classmethod
    def _sources(cls, v: str | list[str]) -> str | list[str]:
        for text in [v] if isinstance(v, str) else v:
            _reference(text)
        if isinstance(v, list) and not v:
            raise ValueError("a source list needs at least one image")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for text in v:
            _reference(text)
        return v

    @property
    def sources(self) -> list[str]:
        """The source references as a list."""
        return [self.source] if isinstance(self.source, str) else list(self.source)

    @property
    def label(self) -> str:
        """The mirror's name, or its first source when it has none."""
        return self.name or self.sources[0]


class Logging(_Model):
    """Log output of the daemon and the sync command."""

    format: Literal["text", "json"] = "text"
    level: Literal["trace", "debug", "info", "warning", "error"] = "info"
    color: Literal["auto", "always", "never"] = "auto"
    output: str = "stderr"
    #: strftime format of the timestamp (None: ISO 8601 in UTC).
    time_format: str | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class Metrics(_Model):
    """Where Prometheus metrics are served (none when `listen` is empty)."""

    listen: str | None = None
    path: str = "/metrics"
    #: Also print the metrics to stdout this often (`5s`; None: never).
    stdout_interval: str | int | None = None

    @field_validator("stdout_interval")
    @classmethod
    def _interval(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            from .durations import parse_interval

            if parse_interval(v).total_seconds() <= 0:
                raise ValueError("stdout_interval must be longer than 0")
        return v


class Oidc(_Model):
    """OIDC ID tokens `serve` accepts besides static tokens (Cloud Scheduler's call)."""

    #: The `aud` a token must carry (Cloud Scheduler: the service's URL by default).
    audience: list[str] = Field(min_length=1)
    #: The service accounts (`email` claim) allowed to call.
    emails: list[str] = Field(min_length=1)
    jwks_url: str = "https://www.googleapis.com/oauth2/v3/certs"
    issuer: str = "https://accounts.google.com"
    #: How long the signing keys are cached.
    jwks_ttl: str | int = "1h"

    @field_validator("audience", "emails", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://127.", "http://localhost", "http://[::1]")):
            raise ValueError("jwks_url must be https:// (plain http on loopback only)")
        return v


class Api(_Model):
    """`ocimirror serve`: bearer tokens every route but health needs, request limits, and
    the registries that API callers may reach.

    `allowed_hosts`: names (besides the address served) that a request's `Host` and
    `Origin` may carry, e.g. the name of a reverse proxy in front; `*` allows any Host.
    `max_entries`: the most `mirrors` entries one request may have.
    """

    tokens: list[Secret] = []
    allowed_hosts: list[str] = []
    max_entries: int = Field(default=1000, ge=1)
    #: Registries (`host[:port]`, globs, address ranges) API jobs may reach at any address.
    allowed_registries: list[str] = []
    #: Let API jobs reach loopback, private and link-local addresses of any registry.
    allow_private_networks: bool = False
    #: Google-signed (OIDC) ID tokens accepted besides `tokens`.
    oidc: Oidc | None = None

    @field_validator("allowed_registries")
    @classmethod
    def _allowed(cls, v: list[str]) -> list[str]:
        from ..netpolicy import AddressPolicy

        AddressPolicy(allowed=tuple(v))  # a ValueError names the entry at fault
        return v

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        return [coerce_secret(t) for t in v] if isinstance(v, list) else v


class Config(_Model):
    """A whole mirror configuration, with `defaults` merged into every mirror."""

    version: Literal[1] = 1
    state: str | None = None
    concurrency: int = Field(default=16, ge=1, le=256)
    #: Where copies run: in the process that plans them, or (PostgreSQL state only) by
    #: `ocimirror worker` processes taking them from a procrastinate queue.
    execution: Literal["in-process", "workers"] = "in-process"
    max_errors: int = Field(default=0, ge=0)
    #: How long the state database keeps finished runs (with their per-image results) and
    #: finished jobs; each mirror's latest run and latest successful run stay. 0: forever.
    keep_history: str | int = "30d"
    #: What `max_errors` counts: failed passes in a row, or mirrors failing at once
    #: (docker-sync's way: each image that failed in the latest round counts one).
    max_errors_counts: Literal["passes", "mirrors"] = "passes"
    logging: Logging = Logging()
    metrics: Metrics = Metrics()
    api: Api = Api()
    registries: dict[str, Registry] = {}
    buckets: dict[str, Bucket] = {}
    defaults: MirrorSettings = MirrorSettings()
    mirrors: list[Mirror] = []

    @field_validator("keep_history")
    @classmethod
    def _keep_history(cls, v: str | int) -> str | int:
        from .durations import parse_interval

        parse_interval(v)
        return v

    @property
    def history_limit(self) -> timedelta | None:
        """How long finished runs and jobs are kept (`keep_history`); None: forever."""
        from .durations import parse_interval

        keep = parse_interval(self.keep_history)
        return keep or None

    @field_validator("registries")
    @classmethod
    def _hosts(cls, v: dict[str, Registry]) -> dict[str, Registry]:
        from ..auth.providers import ecr_match

        for host, reg in v.items():
            if "/" in host or not host:
                raise ValueError(f"registry keys are host names (host[:port]), not {host!r}")
            if reg.create_repositories and not ecr_match(host):
                raise ValueError(
                    f"{host}: create_repositories is for AWS ECR registries only"
                    " (ACCOUNT.dkr.ecr.REGION.amazonaws.com)"
                )
        return v

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: dict[str, Bucket]) -> dict[str, Bucket]:
        from ..reference import parse_bucket
        from ..stores.publicread import refusal

        for name, bucket in v.items():
            try:
                ref = parse_bucket(name)
            except ReferenceError as e:
                raise ValueError(str(e)) from None
            why = refusal(ref.transport) if bucket.public_read else None
            if why is not None:
                raise ValueError(f"{name}: public_read: {why}")
        return v

    @model_validator(mode="after")
    def _merge_and_check(self) -> Config:
        merged = []
        seen: set[str] = set()
        for m in self.mirrors:
            updates = {
                k: getattr(self.defaults, k)
                for k in MirrorSettings.model_fields
                if getattr(m, k) is None and getattr(self.defaults, k) is not None
            }
            merged.append(m.model_copy(update=updates) if updates else m)
            if m.name is not None:
                if m.name in seen:
                    raise ValueError(f"two mirrors are named {m.name!r}")
                seen.add(m.name)
        object.__setattr__(self, "mirrors", merged)
        return self


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema of the native config format."""
    return Config.model_json_schema()
