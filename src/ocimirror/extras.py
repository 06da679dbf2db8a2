"""Optional packages: one clear line naming the extra to install when one is missing.

`require("asyncpg", "postgres", "a PostgreSQL state database")` imports and returns the
module, or raises a ConfigError that reads
`a PostgreSQL state database needs the optional package asyncpg: pip install 'ocimirror[postgres]'`,
which every face prints as one line (exit status 2), never a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError

__all__ = ["MissingExtra", "require"]


class MissingExtra(ConfigError):
    """Raised when an optional package a feature needs is not installed."""

    def __init__(self, module: str, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the optional package {module}: pip install 'ocimirror[{extra}]'"
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise MissingExtra naming the extra `ocimirror[EXTRA]` to install.

    `what` is the feature that needs it, as the user asked for it ("a PostgreSQL state
    database", "an S3 bucket with AWS credentials"...).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".", 1)[0]
        if e.name is not None and e.name.split(".", 1)[0] != top:
            raise  # the package is there but broken inside: not a missing extra
        raise MissingExtra(module, extra, what) from None
