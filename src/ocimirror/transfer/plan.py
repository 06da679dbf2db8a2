"""Planning: turn what the user asked for into a list of image copy tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from ..errors import ConfigError
from ..reference import Reference, join_prefix
from ..store import Store
from .tags import TagFilter, shown, split_listed

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CopyTask:
    """Copy one image (by tag or digest) from `source` to `destination`: the unit of work.

    A planner that already looked may say more: `source_digest` pins the source to the
    digest it saw (the copy reads that digest, shown as `source`), and `dst_absent` says
    the destination lacks the tag (so it is not asked again).
    """

    source: Reference
    destination: Reference
    source_digest: str = ""
    dst_absent: bool = False


def destination_for(source: Reference, destination: Reference) -> Reference:
    """Complete a destination reference from its source: a missing tag or digest is inherited."""
    if destination.tag or destination.digest:
        return destination
    if source.tag:
        return destination.with_tag(source.tag)
    if source.digest:
        return destination.with_digest(source.digest)
    return destination.with_tag("latest")


async def plan_copy(
    source: Reference,
    destination: Reference,
    *,
    source_store: Store,
    all_tags: bool = False,
    tag_filter: TagFilter | None = None,
    invalid: list[str] | None = None,
    listed: list[str] | None = None,
) -> list[CopyTask]:
    """Plan one image, or every selected tag of a repository when `all_tags` is set.

    A listed tag outside the tag grammar (`..`, too long) is skipped with a warning and
    appended to `invalid` when given: one bad name never fails the other tags. `listed`,
    when given, receives every valid tag of the listing (referrer tags included).
    """
    if not all_tags:
        return [CopyTask(source, destination_for(source, destination))]
    if source.tag or source.digest:
        raise ConfigError(f"--all-tags takes a repository without a tag or digest, not {source}")
    if destination.tag or destination.digest:
        raise ConfigError(
            f"--all-tags takes a destination repository without a tag or digest, not {destination}"
        )
    tags, bad = split_listed(await source_store.list_tags(source.repository))
    for tag in bad:
        log.warning("invalid tag skipped", repository=str(source), tag=shown(tag))
    if invalid is not None:
        invalid.extend(bad)
    if listed is not None:
        listed.extend(tags)
    chosen = (tag_filter or TagFilter()).select(tags)
    return [CopyTask(source.with_tag(t), destination.with_tag(t)) for t in chosen]


def plan_mirror(
    prefix: Reference, images: Sequence[Reference]
) -> list[tuple[Reference, Reference]]:
    """Pair each image with its destination under `prefix` (docker-mirror's naming)."""
    return [(image, join_prefix(prefix, image)) for image in images]
