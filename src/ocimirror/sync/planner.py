"""The planner: what a sync pass must do for each mirror, and why.

For every (source tag, target) it emits a task with a reason:

- `immutable`: the tag matches `immutable_tags` (and not `mutable_tags`) and the state
  database says it was mirrored before: no request at all;
- `new`: the target does not have the tag and never had it;
- `missing-at-target`: the state says it was mirrored, but the target lost it;
- `changed`: the target's digest differs from the source's (a moved tag);
- `unchanged`: the same digest at both ends (one HEAD at each), or, trusting the state
  (`trusted_since`), the source's digest is the one last written at the target, the target's
  tags list still shows the tag, and the target was last looked at (copied or HEADed) after
  `trusted_since`: one HEAD at the source only (shown as `unchanged (trusted)`).

With `purge`, a whole-repository mirror also lists both sides and plans the deletion of
each target tag the source no longer has, among the tags the mirror selects (its filter
applied to the target's listing) and never a mutable one (docker-sync's rule).

Tags are listed only when a filter needs it; a literal tag costs one HEAD at the source.
A target repository receiving several tags (or any tag, when trusting the state) is
listed once instead of a HEAD per absent tag. Filtered multi-arch images compare through
the state (source digest → the filtered digest written last time), since their digests
differ by design.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import structlog

from ..errors import ConfigError, NotFound, OcimirrorError
from ..manifest import Descriptor
from ..reference import Reference, join_prefix, parse_prefix
from ..settings.config import Mirror
from ..store import Store
from ..transfer.tags import TagFilter, shown, split_listed

log = structlog.get_logger(__name__)

Reason = Literal["new", "changed", "missing-at-target", "unchanged", "immutable"]
NEEDS_COPY: frozenset[str] = frozenset({"new", "changed", "missing-at-target"})

#: Opens the Store holding a reference (source or target side).
StoreFor = Callable[[Reference, bool], Awaitable[Store]]


@dataclass(frozen=True)
class Known:
    """What the state database remembers of one destination reference."""

    source_digest: str
    target_digest: str
    #: When the target was last looked at: copied, or HEADed and found unchanged.
    verified_at: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PlannedTask:
    """One tag of one mirror to one target, with the reason for what happens to it."""

    mirror: str
    source: Reference
    target: Reference
    reason: Reason
    source_digest: str = ""
    target_digest: str = ""
    filtered: bool = False
    #: The target manifest's media type when the plan asked the target (else "").
    target_media_type: str = ""
    #: Unchanged on the state's word: the target was not HEADed this pass.
    trusted: bool = False
    #: The source manifest's media type when the plan HEADed the source (else ""). The
    #: same digest names the same bytes, so it tells whether the target is an index too.
    source_media_type: str = ""

    @property
    def needs_copy(self) -> bool:
        """Tell whether the pass copies this task (in copy-all-needed mode)."""
        return self.reason in NEEDS_COPY


@dataclass(frozen=True)
class PlanError:
    """A source or target the planner could not look at."""

    mirror: str
    reference: str
    error: str


@dataclass
class Plan:
    """Everything a pass would do, in order."""

    tasks: list[PlannedTask] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)
    #: Target repositories that do not exist yet (their listing said so).
    new_targets: set[Reference] = field(default_factory=set)
    #: Target tags to delete (`purge`): the source no longer has them.
    purges: list[Reference] = field(default_factory=list)
    #: The tags listed while planning, by repository (a reference without tag): the
    #: sources' and the existing targets'. A pass reads referrer tags (`sha256-<hex>`,
    #: cosign's) from them instead of asking for each.
    source_tags: dict[Reference, frozenset[str]] = field(default_factory=dict)
    target_tags: dict[Reference, frozenset[str]] = field(default_factory=dict)

    def count(self, reason: str) -> int:
        """Return how many tasks have `reason`."""
        return sum(1 for t in self.tasks if t.reason == reason)


def pairs_of(mirror: Mirror) -> list[tuple[Reference, Reference]]:
    """Pair each source with each target: a repository, or a prefix for a list of sources."""
    out = []
    sources = [Reference.parse(s) for s in mirror.sources]
    for target_text in mirror.targets:
        for src in sources:
            if isinstance(mirror.source, list):
                dst = join_prefix(parse_prefix(target_text), src).repository_only()
            else:
                dst = Reference.parse(target_text)
                if dst.tag or dst.digest:
                    if not (src.tag or src.digest):
                        raise ConfigError(
                            f"{mirror.label}: target {target_text} has a tag but the source"
                            f" {src} is a whole repository"
                        )
                else:
                    dst = dst.repository_only()
            out.append((src, dst))
    return out


def _matches(tag: str, globs: Sequence[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(tag, g) for g in globs or ())


def is_immutable(mirror: Mirror, tag: str) -> bool:
    """Tell whether a tag of this mirror is immutable (never checked once mirrored)."""
    return _matches(tag, mirror.immutable_tags) and not _matches(tag, mirror.mutable_tags)


async def plan_mirror(
    mirror: Mirror,
    *,
    store_for: StoreFor,
    known: Mapping[str, Known],
    concurrency: int = 32,
    trusted_since: datetime | None = None,
) -> Plan:
    """Plan one mirror: list what needs listing, HEAD what needs checking, give reasons.

    `trusted_since` set: a tag whose target was verified after it is not HEADed at the
    target when the source still has the digest last written there (see the module doc).
    """
    plan = Plan()
    sem = asyncio.Semaphore(concurrency)
    listings: dict[Reference, asyncio.Task[frozenset[str] | None]] = {}
    filtering = bool(mirror.platforms)
    try:
        pairs = pairs_of(mirror)
    except OcimirrorError as e:
        plan.errors.append(PlanError(mirror.label, mirror.label, str(e)))
        return plan

    tag_filter = mirror.tags.filter() if mirror.tags is not None else TagFilter()
    source_listing: dict[Reference, list[str]] = {}

    async def tags_of(src: Reference) -> list[Reference]:
        if src.tag or src.digest:
            return [src]
        listed: list[str] = []
        if tag_filter.needs_listing or mirror.purge:
            store = await store_for(src, False)
            async with sem:
                listed, invalid = split_listed(await store.list_tags(src.repository))
            for tag in invalid:
                log.warning(
                    "invalid tag skipped", mirror=mirror.label, source=str(src), tag=shown(tag)
                )
            source_listing[src] = listed
            plan.source_tags[src.repository_only()] = frozenset(listed)
        return [src.with_tag(t) for t in tag_filter.select(listed)]

    async def purges(src: Reference, dst: Reference) -> None:
        """Plan the deletion of selected target tags the source no longer lists."""
        store = await store_for(dst, True)
        try:
            async with sem:
                there, _invalid = split_listed(await store.list_tags(dst.repository))
        except NotFound:
            return
        except OcimirrorError as e:
            plan.errors.append(PlanError(mirror.label, str(dst), f"purge: {e}"))
            return
        gone = set(there) - set(source_listing.get(src, ()))
        selected = set(tag_filter.select(there))
        for tag in sorted(gone & selected):
            if not _matches(tag, mirror.mutable_tags):
                plan.purges.append(dst.with_tag(tag))

    async def target_tags(dst: Reference, count: int) -> frozenset[str] | None:
        """The target repository's tags when several go there, or any when trusting the
        state (None: not listed). Listed once per repository however many pairs go there."""
        if count < (1 if trusted_since is not None else 2):
            return None
        repo = dst.repository_only()
        if repo not in listings:
            listings[repo] = asyncio.ensure_future(list_target(repo))
        return await listings[repo]

    async def list_target(dst: Reference) -> frozenset[str] | None:
        store = await store_for(dst, True)
        if not store.remote:
            return None  # a local lookup costs nothing: no listing needed
        try:
            async with sem:
                tags = frozenset(await store.list_tags(dst.repository))
            plan.target_tags[dst] = tags
            return tags
        except NotFound:
            plan.new_targets.add(dst.repository_only())
            return frozenset()
        except OcimirrorError:
            return None

    opened: dict[tuple[Reference, bool], Store] = {}

    async def open_store(repo: Reference, target: bool) -> Store:
        """`store_for` once per repository and side: all its tags are in the same store."""
        store = opened.get((repo, target))
        if store is None:
            store = opened[(repo, target)] = await store_for(repo, target)
        return store

    async def head(store: Store, ref: Reference) -> Descriptor | None:
        async with sem:
            return await store.head_manifest(ref.repository, ref.ref)

    async def one(
        src: Reference,
        dst: Reference,
        present: frozenset[str] | None,
        repos: tuple[Reference, Reference],
    ) -> None:
        key = str(dst)
        tag = src.tag or ""
        if tag and key in known and is_immutable(mirror, tag):
            k = known[key]
            plan.tasks.append(
                PlannedTask(mirror.label, src, dst, "immutable", k.source_digest, k.target_digest)
            )
            return
        try:
            src_store = await open_store(repos[0], False)
            dst_store = await open_store(repos[1], True)
            src_type = ""
            if src.digest:
                src_digest = src.digest
            else:
                src_desc = await head(src_store, src)
                if src_desc is None:
                    raise NotFound("manifest unknown")  # PlanError names `src`
                src_digest = src_desc.digest
                src_type = src_desc.media_type
            # A listing shows tags only: a digest reference is always HEADed.
            listed = present is not None and bool(dst.tag)
            absent = present is not None and bool(dst.tag) and dst.ref not in present
            was = known.get(key)
            if (
                listed
                and not absent
                and trusted_since is not None
                and was is not None
                and was.verified_at is not None
                and was.verified_at >= trusted_since
                and was.source_digest == src_digest
            ):
                plan.tasks.append(
                    PlannedTask(
                        mirror.label,
                        src,
                        dst,
                        "unchanged",
                        src_digest,
                        was.target_digest,
                        filtering,
                        trusted=True,
                        source_media_type=src_type,
                    )
                )
                return
            dst_desc = None if absent else await head(dst_store, dst)
        except OcimirrorError as e:
            plan.errors.append(PlanError(mirror.label, str(src), str(e)))
            return
        reason: Reason
        dst_digest = dst_desc.digest if dst_desc else ""
        if dst_desc is None:
            reason = "missing-at-target" if key in known else "new"
        elif dst_digest == src_digest or (
            filtering and key in known and known[key] == Known(src_digest, dst_digest)
        ):
            reason = "unchanged"
        else:
            reason = "changed"
        plan.tasks.append(
            PlannedTask(
                mirror.label,
                src,
                dst,
                reason,
                src_digest,
                dst_digest,
                filtering,
                target_media_type=dst_desc.media_type if dst_desc else "",
                source_media_type=src_type,
            )
        )

    async def pair(src: Reference, dst: Reference) -> None:
        try:
            sources = await tags_of(src)
        except OcimirrorError as e:
            plan.errors.append(PlanError(mirror.label, str(src), str(e)))
            return
        targets = [(s, dst if (dst.tag or dst.digest) else _inherit(dst, s)) for s in sources]
        present = await target_tags(dst, len(targets))
        repos = (src.repository_only(), dst.repository_only())
        await asyncio.gather(*(one(s, d, present, repos) for s, d in targets))
        if mirror.purge and src in source_listing and not (dst.tag or dst.digest):
            await purges(src, dst)

    await asyncio.gather(*(pair(s, d) for s, d in pairs))
    plan.tasks.sort(key=lambda t: (str(t.target.repository_only()), t.target.ref))
    return plan


def _inherit(dst: Reference, src: Reference) -> Reference:
    if src.tag:
        return dst.with_tag(src.tag)
    if src.digest:
        return dst.with_digest(src.digest)
    return dst.with_tag("latest")
