"""The engine every face calls: plan the copies, run them, and summarise the run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..auth.credentials import Credentials, Keychain
from ..client import HostOptions
from ..errors import OcimirrorError
from ..reference import Reference
from ..stores.pool import StorePool
from .copy import Copier, CopyOptions, Endpoint, ImageResult, Progress
from .plan import CopyTask, plan_copy
from .tags import TagFilter

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Side:
    """Connection settings for one side of a copy (source or destination)."""

    options: HostOptions = field(default_factory=HostOptions)
    credentials: Credentials | None = None


@dataclass(frozen=True)
class SkippedTag:
    """A tag a source listed that is not a valid tag name, so it was not copied."""

    source: str
    tag: str
    reason: str = "invalid tag"


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
    src_side, dst_side = source or Side(), destination or Side()
    started = time.monotonic()
    summary = RunSummary()
    pool = StorePool(keychain=keychain)
    try:
        planned = await asyncio.gather(
            *(_plan(pool, s, d, src_side, all_tags, tag_filter, summary) for s, d in pairs)
        )
        tasks: list[CopyTask] = []
        for item in planned:
            if isinstance(item, ImageResult):
                summary.results.append(item)
            else:
                tasks.extend(item)
        reporter = progress(len(tasks)) if progress else None
        copier = Copier(
            options=copy_options, image_concurrency=image_concurrency, progress=reporter
        )
        await _list_destinations(pool, copier, tasks, dst_side, all_tags)

        async def one(task: CopyTask) -> ImageResult:
            try:
                src_store = await pool.store_for(
                    task.source, options=src_side.options, credentials=src_side.credentials
                )
                dst_store = await pool.store_for(
                    task.destination,
                    options=dst_side.options,
                    credentials=dst_side.credentials,
                    create=True,
                )
            except OcimirrorError as e:
                return ImageResult(
                    str(task.source), str(task.destination), status="failed", error=str(e)
                )
            return await copier.copy(
                _endpoint(src_store, task.source), _endpoint(dst_store, task.destination)
            )

        summary.results.extend(await asyncio.gather(*(one(t) for t in tasks)))
        for client in pool.registry_clients():
            counts = summary.requests.setdefault(client.host, {})
            for method, n in client.requests.items():
                counts[method] = counts.get(method, 0) + n
    finally:
        await pool.close()
    summary.seconds = time.monotonic() - started
    return summary


async def _list_destinations(
    pool: StorePool, copier: Copier, tasks: Sequence[CopyTask], side: Side, all_tags: bool
) -> None:
    """List the tags of each destination repository receiving several images (or --all-tags).

    One request per repository tells which tags are absent (no HEAD needed before copying
    them) and whether the repository exists at all (if not, no blob HEADs either).
    """
    by_repo: dict[str, list[CopyTask]] = {}
    for task in tasks:
        by_repo.setdefault(task.destination.name, []).append(task)

    async def one(group: list[CopyTask]) -> None:
        ref = group[0].destination
        if len(group) < 2 and not all_tags:
            return
        try:
            store = await pool.store_for(
                ref, options=side.options, credentials=side.credentials, create=True
            )
        except OcimirrorError as e:
            # Not fatal: the copies open it themselves (and report what is wrong).
            log.debug("destination not listed", repository=str(ref), error=str(e))
            return
        if store.remote:  # a local store's lookups cost nothing: no listing needed
            await copier.list_destination(store, ref.repository)

    await asyncio.gather(*(one(g) for g in by_repo.values()))


def _endpoint(store: Any, ref: Reference) -> Endpoint:
    return Endpoint(store=store, repo=ref.repository, ref=ref.ref, display=str(ref))


async def _plan(
    pool: StorePool,
    src: Reference,
    dst: Reference,
    side: Side,
    all_tags: bool,
    tag_filter: TagFilter | None,
    summary: RunSummary,
) -> list[CopyTask] | ImageResult:
    invalid: list[str] = []
    try:
        store = await pool.store_for(src, options=side.options, credentials=side.credentials)
        return await plan_copy(
            src,
            dst,
            source_store=store,
            all_tags=all_tags,
            tag_filter=tag_filter,
            invalid=invalid,
        )
    except OcimirrorError as e:
        return ImageResult(str(src), str(dst), status="failed", error=str(e))
    finally:
        summary.skipped.extend(SkippedTag(str(src), tag) for tag in invalid)
