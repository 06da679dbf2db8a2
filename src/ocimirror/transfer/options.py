"""What to select, checked in one place: platforms and tag filters for every face.

The CLI's flags, the jobs API's request fields and the sync config's mirror settings all
come through these functions, so a value is accepted or refused (with an error naming it)
the same way whichever face it arrives by. Each face passes the names its users know
(`--include` on the command line, `include` in a request) so that the error speaks in
them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigError
from .tags import TagFilter


def parse_platform(text: str, *, name: str = "platform") -> str:
    """Check one `os/arch[/variant]` platform (each part may be a glob); return it stripped.

    This is the grammar `manifest.Platform.matches` reads. Raise ConfigError naming
    `name` and the bad value.
    """
    value = text.strip()
    parts = value.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"invalid {name} {value!r}: expected os/arch[/variant]")
    return value


def parse_platforms(values: Iterable[str] | None, *, name: str = "platform") -> tuple[str, ...]:
    """Check every platform of `values` (see `parse_platform`), keeping their order."""
    return tuple(parse_platform(v, name=name) for v in values or ())


@dataclass(frozen=True)
class Names:
    """How a face spells the selection options in its errors."""

    all_tags: str = "all_tags"
    include: str = "include"
    exclude: str = "exclude"
    semver: str = "semver"
    latest: str = "latest"


#: The flag names of the command line.
CLI_NAMES = Names("--all-tags", "--include", "--exclude", "--semver", "--latest")


def tag_filter(
    *,
    all_tags: bool,
    tags: Iterable[str] | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    semver: str | None = None,
    latest: int | None = None,
    names: Names = Names(),
) -> TagFilter | None:
    """Return the tag filter of an `all_tags` copy (None without `all_tags`).

    `tags` are exact tags (a sync config's `exact`). Filters without `all_tags` are an
    error: they would silently select nothing. A bad tag, regex (RE2,
    `ocimirror.patterns`), range or count is a ConfigError naming it.
    """
    tags, include, exclude = tuple(tags or ()), tuple(include or ()), tuple(exclude or ())
    if not all_tags:
        if tags or include or exclude or semver or latest is not None:
            raise ConfigError(
                f"{names.include}, {names.exclude}, {names.semver} and {names.latest}"
                f" need {names.all_tags}"
            )
        return None
    return TagFilter(tags=tags, include=include, exclude=exclude, semver=semver, latest=latest)


@dataclass(frozen=True)
class Selection:
    """What to copy of a source: one image, or the tags of a repository a filter selects."""

    all_tags: bool = False
    tags: TagFilter | None = None
