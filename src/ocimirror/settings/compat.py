"""Configs of the tools our users come from, read as they are into a native `Config`.

- docker-sync (Altinity): every key of its default config (`ecr`, `logging`, `sync`,
  `telemetry`) and of its images (`source`, `targets`, `tags`, `mutableTags`,
  `ignoredTags`, `purge`) and registries (`url`, `name`, `auth`; a url
  `s3:<region>:<bucket>` or `r2:<account-id>:<bucket>` is a bucket: username and password
  are its access key id and secret), with docker-sync's
  defaults for what is left out; any other key is a warning. Keys are matched without
  regard to case, as docker-sync's config library does, and its `DOCKERSYNC_*` variables
  override scalar keys. Tags not listed as mutable are immutable: once mirrored they are
  not checked again.
- Docker Mirror Image's `config.ini`: `[DEFAULT] refresh = 0|Nm|Nd|Nw`, then one section
  per image with `image`, `tag` (one, a comma list, or none for every tag),
  `source-repository` (the source registry, Docker Hub by default) and `project` (the
  path under the target registry, which comes from a flag, `OCIMIRROR_TARGET_REGISTRY`,
  or the ECR host of `AWS_ACCOUNT` and `AWS_DEFAULT_REGION`, as Docker Mirror Image's
  README sets them). `refresh = 0` mirrors once at each start of the daemon; `DB_PATH`
  names the state database (SQLite). An ECR target creates the repositories a push finds
  missing, as Docker Mirror Image does, and is logged in to natively (auth/ecr.py).
- docker-sync's `auth: {helper: ecr}` (and `ecr-login`) is the native ECR login
  (auth/ecr.py), run without a helper binary; its top-level `ecr: {region}` says nothing
  the ECR host name does not, and is accepted as such.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from ..auth.providers import ecr_match
from .config import Config
from .loading import ConfigFileError, _pydantic_problems, field_path

TARGET_REGISTRY_ENV = "OCIMIRROR_TARGET_REGISTRY"
#: Docker Mirror Image's state database file.
DB_PATH_ENV = "DB_PATH"

#: docker-sync's bucket registry entries: `s3:<region>:<bucket>`, `r2:<account-id>:<bucket>`.
_BUCKET_URL = re.compile(r"(?:s3|r2):[^:/]+:[^:/]+$")


def _lower_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_lower_keys(v) for v in data]
    return data


def _validated(native: dict[str, Any], source: str, what: str) -> Config:
    try:
        return Config.model_validate(native)
    except ValidationError as e:
        problems = [
            (0, 0, f"{what}: {field_path(p.path)}", p.message) for p in _pydantic_problems(e)
        ]
        raise ConfigFileError(source, problems) from None


def _go_duration(value: Any) -> str | int:
    """docker-sync intervals are Go durations (`30m`, `1h0m0s`) or seconds, read as they are."""
    return int(value) if isinstance(value, int | float) else str(value).strip()


#: docker-sync's defaults where its config leaves a key out (config/*.go).
DOCKER_SYNC_INTERVAL = "30m"
DOCKER_SYNC_MAX_ERRORS = 5
DOCKER_SYNC_STDOUT_INTERVAL = "5s"

#: The scalar keys docker-sync (viper, prefix DOCKERSYNC) also reads from the environment.
_ENV_KEYS = (
    "ecr.region",
    "logging.colors",
    "logging.format",
    "logging.level",
    "logging.output",
    "logging.timeformat",
    "sync.interval",
    "sync.maxerrors",
    "telemetry.enabled",
    "telemetry.metrics.exporter",
    "telemetry.metrics.prometheus.address",
    "telemetry.metrics.prometheus.path",
    "telemetry.metrics.stdout.interval",
)

#: Every key docker-sync's own config knows, and what each image and registry may hold.
_KNOWN = {
    "": {"ecr", "logging", "sync", "telemetry"},
    "ecr": {"region"},
    "logging": {"colors", "format", "level", "output", "timeformat"},
    "sync": {"images", "interval", "maxerrors", "registries"},
    "telemetry": {"enabled", "metrics"},
    "telemetry.metrics": {"exporter", "prometheus", "stdout"},
    "telemetry.metrics.prometheus": {"address", "path"},
    "telemetry.metrics.stdout": {"interval"},
}
_IMAGE_KEYS = {"source", "targets", "tags", "mutabletags", "ignoredtags", "purge", "name"}
_REGISTRY_KEYS = {"auth", "name", "url"}
_AUTH_KEYS = {"helper", "password", "token", "username"}

#: Go's reference-time layout elements, longest first, and their strftime equivalents.
_GO_LAYOUT = (
    ("January", "%B"), ("Monday", "%A"), ("Z07:00", "%z"), ("-07:00", "%z"),
    ("-0700", "%z"), ("Z0700", "%z"), ("2006", "%Y"), (".000000000", ".%f"),
    (".999999999", ".%f"), (".000000", ".%f"), (".999999", ".%f"), (".000", ".%f"),
    (".999", ".%f"), ("Jan", "%b"), ("Mon", "%a"), ("MST", "%Z"), ("002", "%j"),
    ("_2", "%e"), ("15", "%H"), ("01", "%m"), ("02", "%d"), ("03", "%I"), ("04", "%M"),
    ("05", "%S"), ("06", "%y"), ("PM", "%p"), ("pm", "%p"), ("1", "%m"), ("2", "%d"),
    ("3", "%I"), ("4", "%M"), ("5", "%S"),
)  # fmt: skip


def go_time_layout(layout: str) -> str:
    """Translate a Go time layout (`15:04:05`, `2006-01-02T15:04:05Z07:00`) into strftime.

    Fractions of a second become microseconds (`.%f`), whatever digits Go would print.
    """
    out = []
    i = 0
    while i < len(layout):
        for go, py in _GO_LAYOUT:
            if layout.startswith(go, i):
                out.append(py)
                i += len(go)
                break
        else:
            out.append("%%" if layout[i] == "%" else layout[i])
            i += 1
    return "".join(out)


def _env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay `DOCKERSYNC_SYNC.INTERVAL` (viper's name) or `DOCKERSYNC_SYNC_INTERVAL`."""
    for key in _ENV_KEYS:
        upper = key.upper()
        for name in (f"DOCKERSYNC_{upper}", f"DOCKERSYNC_{upper.replace('.', '_')}"):
            if name in env:
                *parents, leaf = key.split(".")
                node = data
                for part in parents:
                    if not isinstance(node.get(part), dict):
                        node[part] = {}
                    node = node[part]
                node[leaf] = env[name]
                break
    return data


def _unknown(node: Any, where: str, known: set[str], warnings: list[str]) -> None:
    if isinstance(node, dict):
        for key in sorted(set(node) - known):
            warnings.append(f"{where + '.' if where else ''}{key}: not supported, ignored")


def _bool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "t", "true", "yes", "on")


def _credentials(auth: dict[str, Any], where: str, source: str) -> dict[str, Any] | None:
    """A docker-sync `auth` block as ocimirror credentials (None: anonymous)."""
    helper = str(auth.get("helper") or "")
    if helper == "ecr":
        # The native ECR login (auth/ecr.py): no helper binary, the AWS default chain.
        return {"provider": "ecr"}
    if helper:
        return {"helper": helper}
    if auth.get("token"):
        return {"token": auth["token"]}
    if auth.get("username") or auth.get("password"):
        return {"username": auth.get("username") or "", "password": auth.get("password") or ""}
    return None


def from_docker_sync(
    text: str, source: str, *, env: Mapping[str, str] | None = None
) -> tuple[Config, list[str]]:
    """Convert docker-sync's YAML into a Config; return it with warnings.

    docker-sync's defaults apply to what the file leaves out (an interval of 30m, at most 5
    images failing in one round, no telemetry), and its `DOCKERSYNC_*` variables override
    the file's scalar keys as viper makes them do.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigFileError.from_yaml(source, e) from None
    data = _lower_keys(raw or {})
    if not isinstance(data, dict):
        raise ConfigFileError(source, [(1, 1, "(top level)", "the config must be a mapping")])
    data = _env_overrides(data, os.environ if env is None else env)
    warnings: list[str] = []
    legacy = "sync" not in data and ("images" in data or "repositories" in data)
    sync = data if legacy else data.get("sync") or {}
    if not legacy:
        for where, known in _KNOWN.items():
            node: Any = data
            for part in where.split(".") if where else ():
                node = node.get(part) if isinstance(node, dict) else None
            _unknown(node, where, known, warnings)
    registries: dict[str, Any] = {}
    buckets: dict[str, Any] = {}
    for i, reg in enumerate(sync.get("registries") or data.get("repositories") or []):
        where = f"sync.registries[{i}]"
        _unknown(reg, where, _REGISTRY_KEYS, warnings)
        _unknown(reg.get("auth"), f"{where}.auth", _AUTH_KEYS, warnings)
        url = str(reg.get("url") or "").removeprefix("https://").removeprefix("http://")
        host = url.split("/", 1)[0]
        if not host:
            raise ConfigFileError(source, [(0, 0, f"{where}.url", "missing")])
        auth = reg.get("auth") or {}
        if _BUCKET_URL.match(url):
            # s3:<region>:<bucket> / r2:<account-id>:<bucket>: the key id and the secret.
            keys = None
            if auth.get("username") or auth.get("password"):
                keys = {"username": auth.get("username"), "password": auth.get("password")}
            buckets[url] = {"credentials": keys}
            continue
        registries[host] = {"credentials": _credentials(auth, where, source)}
    mirrors = []
    for i, img in enumerate(sync.get("images") or data.get("images") or []):
        where = f"sync.images[{i}]"
        mirror: dict[str, Any] = {
            "name": img.get("name") or img.get("source"),
            "source": img.get("source"),
            "targets": img.get("targets") or [],
            "immutable_tags": ["*"],
            "purge": _bool(img.get("purge", False)),
        }
        mutable = img.get("mutabletags")
        mirror["mutable_tags"] = [str(t) for t in (mutable or ["latest"])]
        tags: dict[str, Any] = {}
        if img.get("tags"):
            tags["exact"] = [str(t) for t in img["tags"]]
        if img.get("ignoredtags"):
            tags["exclude"] = [_glob_to_regex(str(t)) for t in img["ignoredtags"]]
        if tags:
            mirror["tags"] = tags
        _unknown(img, where, _IMAGE_KEYS, warnings)
        mirrors.append(mirror)
    native: dict[str, Any] = {
        "registries": registries,
        "buckets": buckets,
        "mirrors": mirrors,
        "defaults": {"schedule": _go_duration(sync.get("interval", DOCKER_SYNC_INTERVAL))},
        "max_errors": int(sync.get("maxerrors", DOCKER_SYNC_MAX_ERRORS)),
        "max_errors_counts": "mirrors",
    }
    log = data.get("logging") or {}
    level = str(log.get("level", "info")).lower()
    if level in ("fatal", "panic", "disabled"):
        warnings.append(f"logging.level: {level.upper()} logs errors only here")
        level = "error"
    native["logging"] = {
        "format": str(log.get("format", "text")).lower(),
        "level": "warning" if level == "warn" else level,
        "color": "auto" if _bool(log.get("colors", True)) else "never",
        "output": str(log.get("output", "stdout")),
        "time_format": go_time_layout(str(log.get("timeformat", "15:04:05"))),
    }
    telemetry = data.get("telemetry") or {}
    if _bool(telemetry.get("enabled", False)):
        metrics = telemetry.get("metrics") or {}
        exporter = str(metrics.get("exporter", "prometheus")).lower()
        if exporter == "stdout":
            every = (metrics.get("stdout") or {}).get("interval", DOCKER_SYNC_STDOUT_INTERVAL)
            native["metrics"] = {"stdout_interval": _go_duration(every)}
        elif exporter == "prometheus":
            prom = metrics.get("prometheus") or {}
            native["metrics"] = {
                "listen": str(prom.get("address", "127.0.0.1:9090")),
                "path": str(prom.get("path", "/metrics")),
            }
        else:
            raise ConfigFileError(
                source,
                [
                    (
                        0,
                        0,
                        "telemetry.metrics.exporter",
                        f"{exporter!r}: expected prometheus or stdout",
                    )
                ],
            )
    return _validated(native, source, "docker-sync"), warnings


def _glob_to_regex(glob: str) -> str:
    """Translate a shell glob (`*`, `?`) into a full-match regex."""
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in glob]
    return "".join(parts)


def from_ini(
    text: str, source: str, *, target_registry: str | None = None
) -> tuple[Config, list[str]]:
    """Convert Docker Mirror Image's config.ini into a Config; return it with warnings."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source)
    except configparser.Error as e:
        line = getattr(e, "lineno", 0) or 0
        raise ConfigFileError(source, [(line, 0, "(syntax)", str(e))]) from None
    warnings: list[str] = []
    target = target_registry or os.environ.get(TARGET_REGISTRY_ENV)
    account, region = os.environ.get("AWS_ACCOUNT"), os.environ.get("AWS_DEFAULT_REGION")
    if not target and account and region:
        target = f"{account}.dkr.ecr.{region}.amazonaws.com"
    if not target:
        raise ConfigFileError(
            source,
            [
                (
                    0,
                    0,
                    "(target registry)",
                    "config.ini names no target registry: give --target-registry,"
                    f" {TARGET_REGISTRY_ENV}, or AWS_ACCOUNT and"
                    " AWS_DEFAULT_REGION",
                )
            ],
        )
    target = target.rstrip("/")
    refresh = parser.defaults().get("refresh", "0").strip()
    mirrors = []
    for section in parser.sections():
        s = parser[section]
        image = s.get("image", section).strip()
        registry = s.get("source-repository", "").strip().rstrip("/")
        project = s.get("project", "").strip().strip("/")
        src = f"{registry}/{image}" if registry else image
        name = image.split("/")[-1]
        dst = "/".join(p for p in (target, project, name) if p)
        mirror: dict[str, Any] = {"name": section, "source": src, "targets": [dst]}
        tags = [t.strip() for t in s.get("tag", "").split(",") if t.strip()]
        if tags:
            mirror["tags"] = {"exact": tags}
        mirrors.append(mirror)
        known = {"image", "tag", "source-repository", "project", "refresh"}
        for key in sorted(set(s) - known - set(parser.defaults())):
            warnings.append(f"[{section}] {key}: not supported, ignored")
    # refresh = 0: mirror once (each start of the daemon), never refresh.
    schedule = "once" if refresh in ("", "0") else refresh
    native: dict[str, Any] = {"defaults": {"schedule": schedule}, "mirrors": mirrors}
    db_path = os.environ.get(DB_PATH_ENV, "").strip()
    if db_path:
        native["state"] = f"sqlite:///{os.path.abspath(db_path)}"
    host = target.split("/", 1)[0]
    if ecr_match(host):
        native["registries"] = {host: {"create_repositories": True}}
    return _validated(native, source, "config.ini"), warnings
