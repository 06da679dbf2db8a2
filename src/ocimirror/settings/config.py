"""The mirror configuration file (sync, `run`, `serve -c`): models, YAML loading with positions.

A config file is YAML (or JSON). Every error names the file, the line and column of the
offending value, and its field path (`mirrors[2].targets[0]`), so a mistake in a file of
two hundred mirrors is found at once. Two other formats are read as they are:
docker-sync's YAML and Docker Mirror Image's `config.ini` (see `compat`).

Why it is long: the models and the loader that positions their errors grew together
(about 620 lines once `keep_history` and the single libyaml parse landed). The split waiting is
the loader (`_compose`, `_positions`, `_expand_env`, `Problem`, `ConfigFileError`,
`parse_config`, `load_config`: lines 416 on) into a module of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError, ReferenceError
from ..reference import Reference
from ..transfer.options import parse_platforms, tag_filter
from ..transfer.tags import TagFilter
from .registries import Bucket, Registry
from .secrets import Secret, coerce_secret

if TYPE_CHECKING:
    from ..transfer.referreroptions import ReferrerOptions

#: `${NAME}` or `${NAME:-default}` in a secret or any string value.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: How long a mirror with `trust_state` trusts the state before looking at every target.
DEFAULT_VERIFY_EVERY = timedelta(hours=24)

Format = Literal["ocimirror", "docker-sync", "docker-mirror-image-ini"]


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


# -- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A loaded config, the format it was read from, and any warnings."""

    config: Config
    format: Format
    path: Path | None
    warnings: tuple[str, ...] = ()


Positions = dict[tuple[str | int, ...], tuple[int, int]]


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    """Parse YAML once: its node tree (for positions) and its data, as `yaml.safe_load` does.

    libyaml's parser (`yaml.CSafeLoader`, with the same constructor and resolver as
    `yaml.SafeLoader`) when PyYAML has it: the pure-Python one took 0.07 s per parse of a
    200-source config, and every start parsed it three times. Text libyaml refuses is
    parsed again by the pure-Python parser, so a YAML error reads as it always did.
    """
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        loader = fast(text)
        try:
            node = loader.get_single_node()
            return node, None if node is None else loader.construct_document(node)
        except yaml.YAMLError:
            pass
        finally:
            loader.dispose()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _positions(node: yaml.Node, path: tuple[str | int, ...], out: Positions) -> None:
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            out[(*path, name)] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _positions(value, (*path, name), out)
            out[(*path, name)] = (value.start_mark.line + 1, value.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _positions(item, (*path, i), out)


def _expand_env(data: Any, path: tuple[str | int, ...], problems: list[Problem]) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string value."""
    if isinstance(data, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(Problem(path, f"environment variable {name} is not set"))
            return ""

        return _ENV_REF.sub(sub, data)
    if isinstance(data, dict):
        return {k: _expand_env(v, (*path, k), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_env(v, (*path, i), problems) for i, v in enumerate(data)]
    return data


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (a field path) and what."""

    path: tuple[str | int, ...]
    message: str


def field_path(path: Sequence[str | int]) -> str:
    """Render a path as `mirrors[2].tags.include[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class ConfigFileError(ConfigError):
    """A config that does not load: every problem with its file, line, column and path."""

    def __init__(self, source: str, problems: Sequence[tuple[int, int, str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [
            f"{source}:{line}:{col}: {path}: {msg}" if line else f"{source}: {path}: {msg}"
            for line, col, path, msg in problems
        ]
        super().__init__("\n".join(lines))

    @classmethod
    def from_yaml(cls, source: str, e: yaml.YAMLError) -> ConfigFileError:
        """The error of a file that is not YAML, at the line and column PyYAML names."""
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(e, "problem", None) or str(e)
        return cls(source, [(line, col, "(syntax)", f"invalid YAML: {problem}")])


def _locate(path: tuple[str | int, ...], positions: Positions) -> tuple[int, int]:
    """The position of the deepest part of `path` present in the file."""
    for n in range(len(path), -1, -1):
        if path[:n] in positions:
            return positions[path[:n]]
    return (1, 1)


def _pydantic_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        # Drop pydantic's union-branch labels such as 'str' / 'list[str]' / 'function-after'.
        loc = tuple(p for p in loc if p not in ("str", "list[str]", "int", "constrained-str"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (misspelt?)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(Problem(loc, msg))
    return problems


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate native ocimirror YAML; raise ConfigFileError with positions."""
    try:
        node, data = _compose(text)
    except yaml.YAMLError as e:
        raise ConfigFileError.from_yaml(source, e) from None
    positions: Positions = {}
    if node is not None:
        _positions(node, (), positions)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(source, [(1, 1, "(top level)", "the config must be a mapping")])
    problems: list[Problem] = []
    data = _expand_env(data, (), problems)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        problems.extend(_pydantic_problems(e))
    if problems:
        located = sorted(
            (*_locate(p.path, positions), field_path(p.path), p.message) for p in problems
        )
        raise ConfigFileError(source, located)
    assert config is not None
    return config


def detect_format(text: str) -> Format:
    """Tell which format a config file is in, from its content."""
    stripped = "\n".join(
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    if re.match(r"\s*\[[^\]]+\]\s*$", stripped.splitlines()[0] if stripped else ""):
        return "docker-mirror-image-ini"
    try:
        _, data = _compose(text)
    except yaml.YAMLError:
        return "ocimirror"
    if isinstance(data, dict) and "mirrors" not in data:
        keys = {str(k).lower() for k in data}
        sync = data.get("sync")
        if isinstance(sync, dict) and ("images" in sync or "registries" in sync):
            return "docker-sync"
        if "images" in keys and ("repositories" in keys or "telemetry" in keys):
            return "docker-sync"
    return "ocimirror"


def load_config(path: Path | str, *, target_registry: str | None = None) -> Loaded:
    """Read a config file in any supported format (detected from its content)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config: {e.strerror}") from None
    fmt = detect_format(text)
    if fmt == "ocimirror":
        return Loaded(parse_config(text, str(p)), fmt, p)
    from . import compat

    if fmt == "docker-sync":
        config, warnings = compat.from_docker_sync(text, str(p))
    else:
        config, warnings = compat.from_ini(text, str(p), target_registry=target_registry)
    return Loaded(config, fmt, p, tuple(warnings))


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema of the native config format."""
    return Config.model_json_schema()
