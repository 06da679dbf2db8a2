"""ocimirror: mirror container images between registries, layout directories and buckets."""

from __future__ import annotations

__version__ = "0.1.0"


def version_line() -> str:
    """What `ocimirror version` prints."""
    return f"ocimirror {__version__}"
