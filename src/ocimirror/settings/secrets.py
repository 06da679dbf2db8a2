"""Secrets in settings, and the strict base of every settings model.

A secret is written as a string (`${ENV}` expanded where the file format does it),
`{env: NAME}` or `{file: PATH}`; its value never shows in a repr, a log line or an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError


class SettingsModel(BaseModel):
    """Base of every settings model: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Secret(SettingsModel):
    """A secret value: inline, from `${ENV}` (expanded at load), or read from a file."""

    value: str | None = None
    file: Path | None = None

    def reveal(self) -> str:
        """Return the secret's text (a file's content without its trailing newline)."""
        if self.file is not None:
            try:
                return self.file.read_text().rstrip("\r\n")
            except OSError as e:
                raise ConfigError(f"cannot read secret file {self.file}: {e.strerror}") from e
        return self.value or ""

    def __repr__(self) -> str:
        return f"Secret(file={self.file!s})" if self.file else "Secret('***')"

    __str__ = __repr__


def coerce_secret(
    value: Any, *, forms: str = "a string, ${ENV_VAR}, {env: NAME} or {file: PATH}"
) -> Any:
    """Accept `"text"`, `{"env": NAME}` or `{"file": PATH}` for a secret (`forms` names them)."""
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
    raise ValueError(f"a secret is {forms}")


SecretField = Annotated[Secret | None, Field(default=None)]
