"""The engine every face calls: plan the copies, list the destinations, copy.

    plan(pairs, selection)       one source image, or the tags a filter selects
      → execute(tasks)           list the destination repositories worth listing,
          → copy_one(task)       then copy each image: the unit of work

The CLI (`run_copies`), the jobs API (`service/jobs.py`) and sync passes
(`sync/runner.py`, whose own planner gives reasons and reads the state database) all run
this one sequence; a face only translates its input (flags, a request, a mirror config)
into tasks and renders the results. `copy_one` is the seam a distributed worker calls: a
task in, an `ImageResult` out, every failure inside the result.

Stores are opened through `Stores`: a `StorePool` and the settings of each side (fixed
options and credentials, as the CLI's flags give them, or options by host, as a config's
`registries` give them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from ..auth.credentials import Credentials, Keychain
from ..client import HostOptions
from ..errors import OcimirrorError, public_message
from ..reference import Reference
from ..store import Store
from ..stores.pool import StorePool
from .copy import Copier, CopyOptions, Endpoint, ImageResult, Progress
from .options import Selection
from .plan import CopyTask, plan_copy
from .tags import TagFilter

log = structlog.get_logger(__name__)

#: Which destination repositories `execute` lists before copying: none, those receiving
#: several images, or all of them (a whole repository is being copied).
Listing = Literal["none", "shared", "all"]


@dataclass(frozen=True)
class Side:
    """Connection settings for one side of a copy (source or destination)."""

    options: HostOptions = field(default_factory=HostOptions)
    credentials: Credentials | None = None
    #: Options by reference (a config's per-host settings); replaces `options` when set.
    options_for: Callable[[Reference], HostOptions | None] | None = None

    def host_options(self, ref: Reference) -> HostOptions | None:
        """Return the connection options for `ref`'s host."""
        return self.options_for(ref) if self.options_for is not None else self.options


class Stores:
    """Opens the Store of a reference on either side of a copy, with that side's settings."""

    def __init__(
        self, pool: StorePool, *, source: Side | None = None, destination: Side | None = None
    ) -> None:
        self.pool = pool
        self.source = source or Side()
        self.destination = destination or Side()

    async def open(self, ref: Reference, *, destination: bool = False) -> Store:
        """Return the Store holding `ref`; a destination's place is made on first write."""
        side = self.destination if destination else self.source
        return await self.pool.store_for(
            ref,
            options=side.host_options(ref),
            credentials=side.credentials,
            create=destination,
        )

    async def __call__(self, ref: Reference, target: bool) -> Store:
        """Open `ref` as a planner asks (`target`: on the destination side)."""
        return await self.open(ref, destination=target)


@dataclass(frozen=True)
class SkippedTag:
    """A tag a source listed that is not a valid tag name, so it was not copied."""

    source: str
    tag: str
    reason: str = "invalid tag"


@dataclass
class Planned:
    """The copy tasks of some pairs, the pairs that could not be planned, skipped tags."""

    tasks: list[CopyTask] = field(default_factory=list)
    failed: list[ImageResult] = field(default_factory=list)
    skipped: list[SkippedTag] = field(default_factory=list)
    #: Source repositories listed while planning (`--all-tags`): (store, repo) → tags.
    listings: dict[tuple[Store, str], frozenset[str]] = field(default_factory=dict)


def _failure(source: str, destination: str, error: OcimirrorError) -> ImageResult:
    return ImageResult(
        source,
        destination,
        status="failed",
        error=str(error),
        public_error=public_message(error),
    )


async def plan(
    pairs: Sequence[tuple[Reference, Reference]], *, stores: Stores, selection: Selection
) -> Planned:
    """Plan each (source, destination) pair; a pair that cannot be planned is a failure."""
    planned = Planned()

    async def one(src: Reference, dst: Reference) -> list[CopyTask] | ImageResult:
        invalid: list[str] = []
        listed: list[str] = []
        try:
            store = await stores.open(src)
            tasks = await plan_copy(
                src,
                dst,
                source_store=store,
                all_tags=selection.all_tags,
                tag_filter=selection.tags,
                invalid=invalid,
                listed=listed,
            )
            if selection.all_tags:
                planned.listings[(store, src.repository)] = frozenset(listed)
            return tasks
        except OcimirrorError as e:
            return _failure(str(src), str(dst), e)
        finally:
            planned.skipped.extend(SkippedTag(str(src), tag) for tag in invalid)

    for item in await asyncio.gather(*(one(s, d) for s, d in pairs)):
        if isinstance(item, ImageResult):
            planned.failed.append(item)
        else:
            planned.tasks.extend(item)
    return planned


async def copy_one(task: CopyTask, *, stores: Stores, copier: Copier) -> ImageResult:
    """Copy one image (the unit of work); every failure is in the result, none raised."""
    source, destination = str(task.source), str(task.destination)
    try:
        src_store = await stores.open(task.source)
        dst_store = await stores.open(task.destination, destination=True)
    except OcimirrorError as e:
        return _failure(source, destination, e)
    src = Endpoint(src_store, task.source.repository, task.source_digest or task.source.ref, source)
    dst = Endpoint(dst_store, task.destination.repository, task.destination.ref, destination)
    return await copier.copy(src, dst, dst_absent=task.dst_absent)


class Watcher(Protocol):
    """Hears each task of `execute` start and end (e.g. to credit its progress)."""

    def started(self, task: CopyTask) -> None:
        """Call before a task's copy begins."""

    def finished(self, task: CopyTask, result: ImageResult | None) -> None:
        """Call when a task's copy ends (None: it was cancelled)."""


async def execute(
    tasks: Sequence[CopyTask],
    *,
    stores: Stores,
    copier: Copier,
    listing: Listing = "shared",
    absent: Iterable[Reference] = (),
    watcher: Watcher | None = None,
    shared: bool = False,
) -> list[ImageResult]:
    """Copy planned tasks with `copier`, after listing the destinations worth it.

    `absent` names destination repositories known not to exist yet (a planner listed
    them): nothing there is asked about. A `shared` copier serves other callers too, so
    an aborted run leaves its transfers running for them; otherwise they are cancelled.
    """
    for repo in absent:
        copier.note_destination(await stores.open(repo, destination=True), repo.repository, None)
    if listing != "none":
        await _list_destinations(tasks, stores=stores, copier=copier, every=listing == "all")

    async def one(task: CopyTask) -> ImageResult:
        if watcher is None:
            return await copy_one(task, stores=stores, copier=copier)
        result: ImageResult | None = None
        watcher.started(task)
        try:
            result = await copy_one(task, stores=stores, copier=copier)
            return result
        finally:
            watcher.finished(task, result)

    try:
        return list(await asyncio.gather(*(one(t) for t in tasks)))
    finally:
        if not shared:
            # Shared transfers are shielded from their waiters: a failed image leaves its
            # siblings' running. Stop them before the caller closes the stores (one that
            # retried after that reopened a session never closed: "Unclosed client session").
            await copier.settle()


async def _list_destinations(
    tasks: Sequence[CopyTask], *, stores: Stores, copier: Copier, every: bool
) -> None:
    """List the tags of each destination repository receiving several images (or `every`).

    One request per repository tells which tags are absent (no HEAD needed before copying
    them) and whether the repository exists at all (if not, no blob HEADs either).
    """
    by_repo: dict[str, list[CopyTask]] = {}
    for task in tasks:
        by_repo.setdefault(task.destination.name, []).append(task)

    async def one(group: list[CopyTask]) -> None:
        ref = group[0].destination
        if len(group) < 2 and not every:
            return
        try:
            store = await stores.open(ref, destination=True)
        except OcimirrorError as e:
            # Not fatal: the copies open it themselves (and report what is wrong).
            log.debug("destination not listed", repository=str(ref), error=str(e))
            return
        if store.remote:  # a local store's lookups cost nothing: no listing needed
            await copier.list_destination(store, ref.repository)

    await asyncio.gather(*(one(g) for g in by_repo.values()))


# -- the one-shot run of the CLI ----------------------------------------------------------


@dataclass
class RunSummary:
    """Every image result of a run, plus request counts per registry host."""

    results: list[ImageResult] = field(default_factory=list)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    #: Listed source tags skipped because they break the tag grammar (not failures).
    skipped: list[SkippedTag] = field(default_factory=list)

    @property
    def failed(self) -> list[ImageResult]:
        """Return the failed images."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """Tell whether every image succeeded."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready summary (the CLI's `--json` output)."""
        counts = {s: 0 for s in ("copied", "unchanged", "failed")}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1  # `skipped`, `planned` when any
        return {
            "ok": self.ok,
            "images": [
                {
                    "source": r.source,
                    "destination": r.destination,
                    "status": r.status,
                    "source_digest": r.source_digest,
                    "destination_digest": r.destination_digest,
                    "media_type": r.media_type,
                    "platforms": r.platforms,
                    "bytes": r.bytes_copied,
                    "blobs": {
                        "copied": r.blobs_copied,
                        "mounted": r.blobs_mounted,
                        "skipped": r.blobs_skipped,
                    },
                    "seconds": round(r.seconds, 3),
                    "referrers": [x.to_json() for x in r.referrers],
                    **({"reason": r.reason} if r.reason else {}),
                    **({"error": r.error} if r.error else {}),
                }
                for r in self.results
            ],
            "counts": counts,
            "skipped": [
                {"source": s.source, "tag": s.tag, "reason": s.reason} for s in self.skipped
            ],
            "bytes": sum(r.bytes_copied for r in self.results),
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
        }


async def run_copies(
    pairs: Sequence[tuple[Reference, Reference]],
    *,
    all_tags: bool = False,
    tag_filter: TagFilter | None = None,
    copy_options: CopyOptions | None = None,
    source: Side | None = None,
    destination: Side | None = None,
    keychain: Keychain | None = None,
    image_concurrency: int = 16,
    progress: Callable[[int], Progress] | None = None,
) -> RunSummary:
    """Plan and copy each (source, destination) pair; one failure never stops the rest."""
    started = time.monotonic()
    summary = RunSummary()
    pool = StorePool(keychain=keychain)
    stores = Stores(pool, source=source, destination=destination)
    try:
        planned = await plan(
            pairs, stores=stores, selection=Selection(all_tags=all_tags, tags=tag_filter)
        )
        summary.results.extend(planned.failed)
        summary.skipped.extend(planned.skipped)
        copier = Copier(
            options=copy_options,
            image_concurrency=image_concurrency,
            progress=progress(len(planned.tasks)) if progress else None,
        )
        for (store, repo), tags in planned.listings.items():
            # Referrer tags missing from the listing are not asked for.
            copier.discovery.note_tags(store, repo, tags)
        summary.results.extend(
            await execute(
                planned.tasks,
                stores=stores,
                copier=copier,
                listing="all" if all_tags else "shared",
            )
        )
        for client in pool.registry_clients():
            counts = summary.requests.setdefault(client.host, {})
            for method, n in client.requests.items():
                counts[method] = counts.get(method, 0) + n
    finally:
        await pool.close()
    summary.seconds = time.monotonic() - started
    return summary
