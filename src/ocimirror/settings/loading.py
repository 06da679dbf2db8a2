"""Reading a config file: its format detected, YAML parsed once, errors positioned.

Every error names the file, the line and column of the offending value, and its field
path (`mirrors[2].targets[0]`), so a mistake in a file of two hundred mirrors is found at
once. `${VAR}` and `${VAR:-default}` are expanded in every string value. docker-sync's
YAML and Docker Mirror Image's `config.ini` go through `compat`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .config import Config

#: `${NAME}` or `${NAME:-default}` in a secret or any string value.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Format = Literal["ocimirror", "docker-sync", "docker-mirror-image-ini"]


@dataclass(frozen=True)
class Loaded:
    """A loaded config, the format it was read from, and any warnings."""

    config: Config
    format: Format
    path: Path | None
    warnings: tuple[str, ...] = ()


Positions = dict[tuple[str | int, ...], tuple[int, int]]


#: A YAML text parsed once: its node tree (for positions) and its data.
Composed = tuple[yaml.Node | None, Any]


def _compose(text: str) -> Composed:
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
    return _validated(text, source, None)


def _validated(text: str, source: str, composed: Composed | None) -> Config:
    """`parse_config`, reusing `composed` (the text already parsed) when given."""
    try:
        node, data = composed if composed is not None else _compose(text)
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
    return _sniff(text)[0]


def _sniff(text: str) -> tuple[Format, Composed | None]:
    """The format of a config file, and its YAML parsed on the way (None: not parsed, or
    not YAML), so that a native config is parsed once."""
    stripped = "\n".join(
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    if re.match(r"\s*\[[^\]]+\]\s*$", stripped.splitlines()[0] if stripped else ""):
        return "docker-mirror-image-ini", None
    try:
        composed = _compose(text)
    except yaml.YAMLError:
        return "ocimirror", None
    data = composed[1]
    if isinstance(data, dict) and "mirrors" not in data:
        keys = {str(k).lower() for k in data}
        sync = data.get("sync")
        if isinstance(sync, dict) and ("images" in sync or "registries" in sync):
            return "docker-sync", composed
        if "images" in keys and ("repositories" in keys or "telemetry" in keys):
            return "docker-sync", composed
    return "ocimirror", composed


def load_config(path: Path | str, *, target_registry: str | None = None) -> Loaded:
    """Read a config file in any supported format (detected from its content)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config: {e.strerror}") from None
    fmt, composed = _sniff(text)
    if fmt == "ocimirror":
        return Loaded(_validated(text, str(p), composed), fmt, p)
    from . import compat

    if fmt == "docker-sync":
        config, warnings = compat.from_docker_sync(text, str(p))
    else:
        config, warnings = compat.from_ini(text, str(p), target_registry=target_registry)
    return Loaded(config, fmt, p, tuple(warnings))
