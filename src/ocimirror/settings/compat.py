"""Configs of the tools our users come from, read as they are into a native `Config`.

- docker-sync (Altinity): `sync.images[].source/targets/mutableTags`,
  `sync.registries[].url/name/auth{username,password,token,helper}` (a url
  `s3:<region>:<bucket>` or `r2:<account-id>:<bucket>` is a bucket: username and password
  are its access key id and secret), `sync.interval`,
  `sync.maxErrors`, `logging`, `telemetry.metrics.prometheus`. Keys are matched without
  regard to case, as docker-sync's config library does. Tags not listed as mutable are
  immutable: once mirrored they are not checked again.
- Docker Mirror Image's `config.ini`: `[DEFAULT] refresh = 0|Nm|Nd|Nw`, then one section
  per image with `image`, `tag` (one, a comma list, or none for every tag),
  `source-repository` (the source registry, Docker Hub by default) and `project` (the
  path under the target registry, which comes from a flag or `OCIMIRROR_TARGET_REGISTRY`,
  else, as Docker Mirror Image's README sets them, `CLOUD=AWS` with `AWS_ACCOUNT` and
  `AWS_DEFAULT_REGION`: `AWS_ACCOUNT.dkr.ecr.AWS_DEFAULT_REGION.amazonaws.com`). An ECR
  target creates the repositories a push finds missing, as Docker Mirror Image does.
- docker-sync's `auth: {helper: ecr}` (and `ecr-login`) is the native ECR login
  (auth/ecr.py), run without a helper binary; its top-level `ecr: {region}` says nothing
  the ECR host name does not, and is accepted as such.
"""

from __future__ import annotations

import configparser
import os
import re
from typing import Any

import yaml
from pydantic import ValidationError

from ..auth.providers import ecr_match
from .config import Config, ConfigFileError, _pydantic_problems, field_path

TARGET_REGISTRY_ENV = "OCIMIRROR_TARGET_REGISTRY"

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


def from_docker_sync(text: str, source: str) -> tuple[Config, list[str]]:
    """Convert docker-sync's YAML into a Config; return it with warnings."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigFileError(
            source, [(line, col, "(syntax)", f"invalid YAML: {problem}")]
        ) from None
    data = _lower_keys(raw or {})
    sync = data.get("sync", data)
    warnings: list[str] = []
    registries: dict[str, Any] = {}
    buckets: dict[str, Any] = {}
    for i, reg in enumerate(sync.get("registries") or data.get("repositories") or []):
        url = str(reg.get("url") or "").removeprefix("https://").removeprefix("http://")
        host = url.split("/", 1)[0]
        if not host:
            raise ConfigFileError(source, [(0, 0, f"sync.registries[{i}].url", "missing")])
        auth = reg.get("auth") or {}
        if _BUCKET_URL.match(url):
            # s3:<region>:<bucket> / r2:<account-id>:<bucket>: the key id and the secret.
            keys = None
            if auth.get("username") or auth.get("password"):
                keys = {"username": auth.get("username"), "password": auth.get("password")}
            buckets[url] = {"credentials": keys}
            continue
        creds: dict[str, Any] = {}
        if auth.get("helper"):
            creds["helper"] = auth["helper"]
        elif auth.get("token"):
            creds["token"] = auth["token"]
        elif auth.get("username") or auth.get("password"):
            creds["username"] = auth.get("username")
            creds["password"] = auth.get("password")
        registries[host] = {"credentials": creds or None}
    mirrors = []
    for i, img in enumerate(sync.get("images") or data.get("images") or []):
        mirror: dict[str, Any] = {
            "name": img.get("name") or img.get("source"),
            "source": img.get("source"),
            "targets": img.get("targets") or [],
            "immutable_tags": ["*"],
        }
        mutable = img.get("mutabletags")
        mirror["mutable_tags"] = [str(t) for t in (mutable or ["latest"])]
        if img.get("ignoredtags"):
            mirror["tags"] = {"exclude": [_glob_to_regex(str(t)) for t in img["ignoredtags"]]}
        for key in sorted(set(img) - {"name", "source", "targets", "mutabletags", "ignoredtags"}):
            warnings.append(f"sync.images[{i}].{key}: not supported, ignored")
        mirrors.append(mirror)
    native: dict[str, Any] = {"registries": registries, "buckets": buckets, "mirrors": mirrors}
    if "interval" in sync:
        native["defaults"] = {"schedule": _go_duration(sync["interval"])}
    if "maxerrors" in sync:
        native["max_errors"] = int(sync["maxerrors"])
    log = data.get("logging") or {}
    if log:
        level = str(log.get("level", "info")).lower()
        native["logging"] = {
            "format": str(log.get("format", "text")).lower(),
            "level": "warning" if level == "warn" else level,
            "color": "always" if log.get("colors") else "never",
            "output": str(log.get("output", "stderr")),
        }
    prom = ((data.get("telemetry") or {}).get("metrics") or {}).get("prometheus") or {}
    if prom.get("address"):
        native["metrics"] = {"listen": prom["address"], "path": prom.get("path", "/metrics")}
    return _validated(native, source, "docker-sync"), warnings


def _glob_to_regex(glob: str) -> str:
    """Translate a shell glob (`*`, `?`) into a full-match regex."""
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in glob]
    return "".join(parts)


def _aws_target() -> str | None:
    """Docker Mirror Image's ECR target from its environment, when it names one."""
    if os.environ.get("CLOUD", "").strip().upper() != "AWS":
        return None
    account = os.environ.get("AWS_ACCOUNT", "").strip()
    region = os.environ.get("AWS_DEFAULT_REGION", "").strip()
    if not account or not region:
        return None
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


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
    target = target_registry or os.environ.get(TARGET_REGISTRY_ENV) or _aws_target()
    if not target:
        raise ConfigFileError(
            source,
            [
                (
                    0,
                    0,
                    "(target registry)",
                    "config.ini names no target registry: give --target-registry,"
                    f" {TARGET_REGISTRY_ENV}, or CLOUD=AWS with AWS_ACCOUNT and"
                    " AWS_DEFAULT_REGION",
                )
            ],
        )
    target = target.rstrip("/")
    refresh = parser.defaults().get("refresh", "0").strip()
    warnings: list[str] = []
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
    native: dict[str, Any] = {"defaults": {"schedule": refresh or "0"}, "mirrors": mirrors}
    host = target.split("/", 1)[0]
    if ecr_match(host):
        native["registries"] = {host: {"create_repositories": True}}
    return _validated(native, source, "config.ini"), warnings
