"""`ocimirror docker-sync [ARGS…]`: Altinity docker-sync's command line, as it is.

    docker-sync [--config FILE]                 the daemon (./config.yaml by default)
    docker-sync --source S --target T [...]     one-off copy (the form its README shows)
    docker-sync sync --source S --target T ...  one-off copy, docker-sync's flags
    docker-sync sync --config FILE              one pass over a config file
    docker-sync writeConfig [-o FILE]           docker-sync's default config
    docker-sync version

Flags are parsed as cobra does (`--flag value`, `--flag=value`, `-s value`, comma lists
for `--tags`, `--mutable-tags`, `--ignored-tags`, repeatable). Defaults come from the
variables docker-sync reads: `DOCKER_SYNC_{SOURCE,TARGET}_{USERNAME,PASSWORD,TOKEN,
HELPER}` and `AWS_REGION`. A one-off copy is turned into a docker-sync config and run
as one, exactly as docker-sync does, so both forms share one reading of its keys
(`ocimirror.settings.compat`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import typer

from . import commands

#: What `writeConfig` writes: docker-sync's own defaults (config/*.go), key case as viper
#: writes them.
DEFAULT_CONFIG = """\
ecr:
  region: us-east-1
logging:
  colors: true
  format: text
  level: INFO
  output: stdout
  timeformat: "15:04:05"
sync:
  images:
    - source: docker.io/library/ubuntu
      targets:
        - docker.io/library/ubuntu
      tags: []
      mutabletags:
        - latest
      ignoredtags: []
  interval: 30m
  maxerrors: 5
  registries:
    - auth:
        helper: ""
        password: ""
        token: ""
        username: ""
      name: Docker Hub
      url: docker.io
telemetry:
  enabled: false
  metrics:
    exporter: prometheus
    prometheus:
      address: 127.0.0.1:9090
      path: /metrics
    stdout:
      interval: 5s
"""

#: Where docker-sync looks for `config.yaml` when no --config is given (viper's paths).
SEARCH_PATHS = ("$HOME/.docker-sync", ".")


#: How `ocimirror` registers the command: every argument is docker-sync's to parse.
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise commands._fail(f"docker-sync: {message}")


def _slice(values: list[str] | None) -> list[str]:
    """cobra's StringSlice: repeatable, each value a comma list."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _one_off_flags(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--source", "-s")
    p.add_argument("--target", "-t")
    p.add_argument("--tags", "-o", action="append")
    p.add_argument("--mutable-tags", "-m", action="append")
    p.add_argument("--ignored-tags", "-i", action="append")
    p.add_argument("--purge", "-p", action="store_true")
    p.add_argument("--ecr-region", default=env("AWS_REGION", ""))
    for side in ("source", "target"):
        for what in ("username", "password", "token", "helper"):
            default = env(f"DOCKER_SYNC_{side.upper()}_{what.upper()}", "")
            p.add_argument(f"--{side}-{what}", default=default)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--state")


def _parser() -> argparse.ArgumentParser:
    root = _Parser(prog="ocimirror docker-sync", description="Altinity docker-sync's CLI.")
    root.add_argument("--config")
    _one_off_flags(root)
    sub = root.add_subparsers(dest="command", parser_class=_Parser)
    sync = sub.add_parser("sync", help="One-off copy (--source/--target) or one config pass.")
    sync.add_argument("--config")
    _one_off_flags(sync)
    write = sub.add_parser("writeConfig", help="Write docker-sync's default config.")
    write.add_argument("--output", "-o", default="")
    write.add_argument("--config")
    sub.add_parser("version", help="Print the version.")
    return root


def _registry(ref: str) -> str:
    """docker-sync's `GetRegistry`: the host of a reference, `docker.io` for Hub names."""
    fields = ref.split("/")
    if ref.startswith("public.ecr.aws"):
        return "/".join(fields[:2])
    if len(fields) <= 2:
        return "docker.io"
    return fields[0]


def one_off_config(a: argparse.Namespace) -> dict[str, Any]:
    """The docker-sync config that docker-sync itself writes for a one-off copy."""
    image: dict[str, Any] = {
        "source": a.source,
        "targets": [a.target],
        "tags": _slice(a.tags),
        "mutableTags": _slice(a.mutable_tags),
        "ignoredTags": _slice(a.ignored_tags),
        "purge": bool(a.purge),
    }
    registries = []
    for side, ref in (("source", a.source), ("target", a.target)):
        auth = {w: getattr(a, f"{side}_{w}") for w in ("username", "password", "token", "helper")}
        if any(auth.values()):
            registries.append({"auth": auth, "name": side, "url": _registry(ref)})
    return {
        "ecr": {"region": a.ecr_region},
        "sync": {"images": [image], "registries": registries, "maxErrors": 0},
        "logging": {"output": "stderr"},
    }


def find_config(explicit: str | None) -> Path:
    """The config file: --config, else config.yaml in $HOME/.docker-sync or here."""
    if explicit:
        return Path(explicit)
    for folder in SEARCH_PATHS:
        candidate = Path(os.path.expandvars(folder)) / "config.yaml"
        if candidate.is_file():
            return candidate
    raise commands._fail(
        "docker-sync: no config.yaml in ~/.docker-sync or the working directory; give"
        " --config FILE, or write one with `ocimirror docker-sync writeConfig -o config.yaml`"
    )


def _write_config(output: str) -> None:
    if not output:
        sys.stdout.write(DEFAULT_CONFIG)
        return
    try:
        with open(output, "x") as f:  # viper's SafeWriteConfigAs: never overwrite
            f.write(DEFAULT_CONFIG)
    except FileExistsError:
        raise commands._fail(f"docker-sync: {output} already exists") from None
    except OSError as e:
        raise commands._fail(f"docker-sync: cannot write {output}: {e.strerror}") from None


def _one_off(a: argparse.Namespace) -> None:
    if not a.source or not a.target:
        raise commands._fail("docker-sync: --source and --target go together (both required)")
    if a.ecr_region and "ecr" not in (a.source_helper, a.target_helper):
        print(
            "warning: --ecr-region is used only with --source-helper/--target-helper ecr",
            file=sys.stderr,
        )
    import yaml

    with tempfile.TemporaryDirectory(prefix="docker-sync") as tmp:
        path = Path(tmp) / "config.yaml"
        path.touch(mode=0o600)  # it may hold passwords (and the directory is 0700)
        path.write_text(yaml.safe_dump(one_off_config(a), sort_keys=False))
        commands.sync(
            config=path,
            dry_run=a.dry_run,
            state=a.state,
            no_state=a.state is None,
            verbose=False,
        )


def docker_sync(ctx: typer.Context) -> None:
    """Altinity docker-sync's command line as it is (`ocimirror docker-sync --help`)."""
    a = _parser().parse_args(ctx.args)
    if a.command == "version":
        from .. import version_line

        print(version_line())
        return
    if a.command == "writeConfig":
        _write_config(a.output)
        return
    if a.source or a.target:
        if a.config:
            raise commands._fail("docker-sync: give either --config or --source/--target")
        _one_off(a)
        return
    config = find_config(a.config)
    if a.command == "sync":
        commands.sync(config=config, dry_run=a.dry_run, state=a.state, verbose=False)
        return
    commands.run(config=config, state=a.state)
