"""One sync pass over the configured mirrors: plan, copy what is needed, remember it.

The same function serves `ocimirror sync`, the daemon and `serve -c`. Planning is the
sync planner's (reasons, the state database); the copies after it are the engine's
(`transfer.engine.execute`), the sequence every face runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from ..client import HostOptions
from ..errors import OcimirrorError, public_message
from ..reference import Reference
from ..settings.config import Config, Mirror, Referrers
from ..settings.connection import host_options, pool_for
from ..state.db import StateDB, TaskRecord
from ..store import TagDeleter
from ..stores.pool import StorePool
from ..stores.schemes import scheme_for
from ..transfer.copy import Copier, CopyOptions, Endpoint, ImageResult, Progress
from ..transfer.engine import Side, Stores, execute
from ..transfer.plan import CopyTask
from ..transfer.referrers import ReferrerOptions
from ..workers import dispatch
from ..workers.ledger import PlannerCounts, QueuedCopy
from ..workers.queue import CopyJob
from ..workers.schema import require_postgres
from .planner import Known, Plan, PlannedTask, StoreFor, is_immutable, plan_mirror

log = structlog.get_logger(__name__)

Mode = Literal["all", "missing-only", "dry-run"]
Trigger = Literal["schedule", "manual", "api", "cli"]
#: What time it is (UTC, aware): tests inject their own to move past `verify_every`.
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class MirrorPass:
    """What one pass did for one mirror."""

    mirror: str
    plan: Plan
    results: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0
    run_id: int | None = None
    #: Seconds the plan took (listing and HEADs, before any copy).
    plan_seconds: float = 0.0
    #: A dry run's repositories the copies would create (ECR `create_repositories`).
    would_create: list[str] = field(default_factory=list)
    #: Target tags deleted by `purge`, and those that could not be (with why).
    purged: list[str] = field(default_factory=list)
    purge_errors: list[str] = field(default_factory=list)
    #: Unchanged images whose referrers were looked at (and found, or failed to be).
    referrer_checks: list[ImageResult] = field(default_factory=list)
    #: A dry run's images that would be copied (`planned`), with the referrers found.
    planned: list[ImageResult] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Every failure of the pass, one line each."""
        lines = [f"{e.reference}: {e.error}" for e in self.plan.errors]
        lines += [
            f"{r.source} → {r.destination}: {r.error}"
            for r in self.results + self.planned
            if r.error
        ]
        lines += [
            f"{r.source} → {r.destination}: referrers: {r.error}"
            for r in self.referrer_checks
            if r.error
        ]
        return lines + self.purge_errors

    @property
    def status(self) -> Literal["ok", "partial", "failed"]:
        """`ok`, `partial` (some failures) or `failed` (nothing succeeded)."""
        bad = len(self.failed)
        if not bad:
            return "ok"
        good = sum(1 for r in self.results if r.status != "failed")
        good += sum(1 for t in self.plan.tasks if not t.needs_copy) + len(self.purged)
        return "partial" if good else "failed"

    @property
    def copied(self) -> int:
        """Images copied."""
        return sum(1 for r in self.results if r.status == "copied")

    @property
    def bytes(self) -> int:
        """Bytes copied."""
        return sum(r.bytes_copied for r in self.results)


async def sync_pass(
    config: Config,
    *,
    state: StateDB | None,
    mode: Mode = "all",
    mirrors: Sequence[str] | None = None,
    trigger: Trigger = "cli",
    progress: Progress | None = None,
    pool: StorePool | None = None,
    trust_state: bool | None = None,
    verify: bool = False,
    clock: Clock = _utcnow,
) -> list[MirrorPass]:
    """Run one pass over the selected mirrors (all by default); failures never stop it.

    `trust_state` True turns a mirror's `trust_state` on (None: as configured); `verify`
    makes this pass look at every target (a full check) even where the state is trusted.
    """
    chosen = [m for m in config.mirrors if mirrors is None or m.label in mirrors]
    if config.execution == "workers" and mode != "dry-run":
        if state is None:
            raise OcimirrorError("execution: workers needs a PostgreSQL state database")
        require_postgres(state)
    own_pool = pool is None
    pool = pool or pool_for(config)
    try:
        passes = []
        for mirror in chosen:
            trust = (trust_state or bool(mirror.trust_state)) and not verify
            trusted_since = clock() - mirror.verify_interval if trust else None
            passes.append(
                await _one_mirror(
                    config, mirror, pool, state, mode, trigger, progress, trusted_since
                )
            )
        return passes
    finally:
        if own_pool:
            await pool.close()


async def _one_mirror(
    config: Config,
    mirror: Mirror,
    pool: StorePool,
    state: StateDB | None,
    mode: Mode,
    trigger: Trigger,
    progress: Progress | None,
    trusted_since: datetime | None = None,
) -> MirrorPass:
    started = time.monotonic()
    side = Side(options_for=lambda ref: _host_options(config, ref))
    stores = Stores(pool, source=side, destination=side)
    known: dict[str, Known] = {}
    last_seen: dict[str, datetime] = {}
    run_id = None
    if state is not None:
        synced = await state.synced(mirror.label)
        known = {k: Known(v.source_digest, v.target_digest, v.synced_at) for k, v in synced.items()}
        last_seen = {k: v.synced_at for k, v in synced.items()}
        if mode != "dry-run":
            # A run of this mirror still "running" was left by a process that stopped
            # (killed, or its machine lost): it never finishes now, unless queue workers
            # still hold its copies.
            held = await held_by_workers(config, state)
            stale = await state.interrupt_runs(mirror=mirror.label, keep=held)
            if stale:
                log.warning(
                    "runs left running by a stopped process marked interrupted",
                    mirror=mirror.label,
                    count=stale,
                )
            run_id = await state.start_run(mirror.label, trigger)
    try:
        return await _pass(
            config,
            mirror,
            stores,
            state,
            mode,
            progress,
            known,
            last_seen,
            run_id,
            started,
            trusted_since,
        )
    except BaseException as e:
        if state is not None and run_id is not None:
            # Cancelled (SIGTERM, the daemon aborting) or crashed: never left "running".
            await asyncio.shield(_abandon(state, run_id, e))
        raise


async def _pass(
    config: Config,
    mirror: Mirror,
    stores: Stores,
    state: StateDB | None,
    mode: Mode,
    progress: Progress | None,
    known: dict[str, Known],
    last_seen: dict[str, datetime],
    run_id: int | None,
    started: float,
    trusted_since: datetime | None,
) -> MirrorPass:
    """Plan one mirror, copy what the plan says, and record it (after `_one_mirror`)."""
    planning = time.monotonic()
    plan = await plan_mirror(
        mirror,
        store_for=stores,
        known=known,
        concurrency=config.concurrency * 2,
        trusted_since=trusted_since if state is not None else None,
    )
    result = MirrorPass(mirror.label, plan, run_id=run_id)
    result.plan_seconds = time.monotonic() - planning
    log.info(
        "mirror planned",
        mirror=mirror.label,
        tasks=len(plan.tasks),
        errors=len(plan.errors),
        seconds=round(result.plan_seconds, 3),
    )
    dry_run = mode == "dry-run"
    referrers = (mirror.referrers or Referrers()).options()
    if dry_run:
        result.would_create = await _would_create(config, plan)
    if not dry_run or referrers.enabled:
        # A dry run with referrers finds them as a copy would (HEADs and GETs at the
        # source, the destination's lists read), with a copier that writes nothing.
        todo = [
            t
            for t in plan.tasks
            if t.needs_copy and (mode != "missing-only" or t.reason != "changed")
        ]
        copier = Copier(
            options=CopyOptions(
                platforms=tuple(mirror.platforms or ()),
                include_foreign=bool(mirror.include_foreign),
                referrers=referrers,
                dry_run=dry_run,
            ),
            image_concurrency=config.concurrency,
            progress=None if dry_run else progress,
        )
        if referrers.enabled:
            await _note_listings(copier, plan, stores)
        # Unchanged images may have gained signatures: one look each (immutable tags too
        # when the mirror asks for it).
        looks = [
            t
            for t in plan.tasks
            if _look_for_referrers(t, referrers)
            and _due(last_seen.get(str(t.target)), referrers.check_interval)
        ]
        # A dry run never queues: it runs the copier in dry-run mode here, writing nothing.
        queued = config.execution == "workers" and bool(todo) and not dry_run
        if queued and (state is None or run_id is None):
            raise OcimirrorError("execution: workers needs a state database (--no-state refused)")
        if not queued:
            # The planner listed and HEADed the targets already: nothing more to list.
            done = await execute(
                [_task(t) for t in todo],
                stores=stores,
                copier=copier,
                listing="none",
                absent=sorted(plan.new_targets, key=str),
            )
            if dry_run:
                result.planned = done
            else:
                result.results = done
        try:
            refreshed = await asyncio.gather(*(_refresh(copier, t, stores) for t in looks))
        except BaseException:
            copier.cancel()  # shared transfers are shielded from their waiters: stop them too
            raise
        result.referrer_checks = [r for r in refreshed if r.referrers or r.status == "failed"]
        if not dry_run:
            await _purge(result, stores)
        if queued and state is not None and run_id is not None:
            await _queue(state, run_id, mirror, result, todo, copier.options)
            result.results = await dispatch.await_pass(state, run_id)
            result.seconds = time.monotonic() - started
            return result
    result.seconds = time.monotonic() - started
    if state is not None and run_id is not None:
        await _record(state, run_id, mirror, result)
    return result


async def _abandon(state: StateDB, run_id: int, cause: BaseException) -> None:
    """Record a run that stopped before its end: interrupted (cancelled) or failed."""
    if isinstance(cause, asyncio.CancelledError | KeyboardInterrupt):
        status: Literal["interrupted", "failed"] = "interrupted"
        error = "interrupted: stopped before the pass finished"
    else:
        status, error = "failed", f"the pass stopped: {public_message(cause)}"
    try:
        await state.finish_run(
            run_id, status, copied=0, unchanged=0, failed=0, skipped=0, bytes=0, error=error
        )
    except Exception as e:  # the database itself may be what failed
        log.error("could not record the end of a run", run=run_id, error=str(e))


async def _queue(
    state: StateDB,
    run_id: int,
    mirror: Mirror,
    done: MirrorPass,
    todo: Sequence[PlannedTask],
    options: CopyOptions,
) -> None:
    """Record what the planner did itself, then hand the copies to the queue's workers."""
    queued = {str(t.target) for t in todo}
    await state.record_tasks(run_id, _records(mirror, done, queued=queued))
    counts = PlannerCounts(
        unchanged=done.plan.count("unchanged") + done.plan.count("immutable"),
        good=sum(1 for t in done.plan.tasks if not t.needs_copy) + len(done.purged),
        failed=len(done.plan.errors) + len(done.purge_errors),
        errors=tuple([f"{e.reference}: {e.error}" for e in done.plan.errors] + done.purge_errors),
    )
    copies = [
        (
            QueuedCopy(
                mirror=mirror.label,
                target=str(t.target.repository_only()),
                source_ref=str(t.source),
                dest_ref=str(t.target),
                reason=t.reason,
                source_digest=t.source_digest or None,
                immutable=_immutable(mirror, t),
            ),
            CopyJob.of(_task(t), options),
        )
        for t in todo
    ]
    await dispatch.enqueue(state, run_id, mirror.label, copies, counts)


async def held_by_workers(config: Config, state: StateDB) -> set[int]:
    """The runs queue workers still hold (empty unless `execution: workers`)."""
    if config.execution != "workers":
        return set()
    return await dispatch.held_runs(state)


async def _would_create(config: Config, plan: Plan) -> list[str]:
    """The target repositories a pass would create: those missing at an ECR registry whose
    config creates repositories (asked with DescribeRepositories)."""
    wanted: dict[str, list[str]] = {}
    for t in plan.tasks:
        reg = config.registries.get(t.target.registry)
        if t.needs_copy and reg is not None and reg.create_repositories:
            wanted.setdefault(t.target.registry, []).append(t.target.repository)
    if not wanted:
        return []
    from ..auth.ecr import EcrProvider

    provider = EcrProvider()
    out: list[str] = []
    for host, repos in wanted.items():
        out += [f"{host}/{r}" for r in await provider.missing_repositories(host, repos)]
    return out


def _host_options(config: Config, ref: Reference) -> HostOptions | None:
    """The config's settings for a registry reference's host (None for a layout)."""
    return host_options(config, ref.api_host) if scheme_for(ref).registry_host else None


def _task(task: PlannedTask) -> CopyTask:
    """The engine's task for a planned one: from the digest the planner saw."""
    return CopyTask(
        task.source,
        task.target,
        source_digest=task.source_digest,
        dst_absent=task.reason != "changed",
    )


async def _purge(done: MirrorPass, store_for: StoreFor) -> None:
    """Delete the tags the plan says to purge, one at a time (failures are reported)."""
    for ref in done.plan.purges:
        try:
            store = await store_for(ref, True)
            if not isinstance(store, TagDeleter):
                raise OcimirrorError(f"{store.name} cannot delete tags")
            await store.delete_tag(ref.repository, ref.ref)
        except OcimirrorError as e:
            done.purge_errors.append(f"{ref}: purge: {e}")
            continue
        log.info("tag purged", mirror=done.mirror, target=str(ref))
        done.purged.append(str(ref))


async def _note_listings(copier: Copier, plan: Plan, store_for: StoreFor) -> None:
    """Hand the plan's tag lists to the copier: referrer tags (`sha256-<hex>`, cosign's)
    missing from them are not asked for at the source, nor at the target."""
    for ref, tags in plan.source_tags.items():
        copier.discovery.note_tags(await store_for(ref, False), ref.repository, tags)
    for ref, tags in plan.target_tags.items():
        copier.note_destination(await store_for(ref, True), ref.repository, tags)


def _look_for_referrers(task: PlannedTask, options: ReferrerOptions) -> bool:
    if not options.enabled or not task.target_digest or task.filtered:
        return False
    return task.reason == "unchanged" or (options.check_immutable and task.reason == "immutable")


def _due(last: datetime | None, interval: float | None) -> bool:
    """Tell whether an unchanged tag's referrers are due a look (the last pass is too old)."""
    if interval is None or last is None:
        return True
    return (datetime.now(UTC) - last).total_seconds() >= interval


async def _refresh(copier: Copier, task: PlannedTask, store_for: StoreFor) -> ImageResult:
    try:
        src_store = await store_for(task.source, False)
        dst_store = await store_for(task.target, True)
    except OcimirrorError as e:
        return ImageResult(str(task.source), str(task.target), status="failed", error=str(e))
    src = Endpoint(src_store, task.source.repository, task.target_digest, str(task.source))
    dst = Endpoint(dst_store, task.target.repository, task.target.ref, str(task.target))
    # Trusted (the target not HEADed): the source's media type, of the same digest (a
    # platform-filtered index is an index too).
    media_type = task.target_media_type or task.source_media_type
    return await copier.refresh_referrers(src, dst, task.target_digest, media_type)


async def _record(state: StateDB, run_id: int, mirror: Mirror, done: MirrorPass) -> None:
    """Write the pass's task results and the run's outcome in two transactions."""
    records = _records(mirror, done)
    await state.record_tasks(run_id, records)
    await state.finish_run(
        run_id,
        done.status,
        copied=done.copied,
        unchanged=done.plan.count("unchanged") + done.plan.count("immutable"),
        failed=len(done.failed),
        skipped=sum(1 for r in records if r.status == "skipped"),
        bytes=done.bytes,
        error="; ".join(done.failed[:3]) or None,
    )


def _records(mirror: Mirror, done: MirrorPass, *, queued: Collection[str] = ()) -> list[TaskRecord]:
    """The task results of a pass, but the copies `queued` for workers (they record them)."""
    by_target = {r.destination: r for r in done.results}
    # An unchanged image whose referrers could not be read is not synced: the next pass
    # looks again, whatever the check interval.
    unchecked = {r.destination: r.error for r in done.referrer_checks if r.status == "failed"}
    records: list[TaskRecord] = []
    for task in done.plan.tasks:
        if str(task.target) in queued:
            continue
        if task.reason == "immutable" or task.trusted:
            # Nothing was asked of the target, nothing new to remember: `synced_at` stays
            # the last time the target was looked at, which `verify_every` counts from.
            continue
        r = by_target.get(str(task.target))
        if r is None:  # not copied: unchanged, or a changed tag in missing-only mode
            status: Literal["unchanged", "skipped", "failed"] = (
                "unchanged" if task.reason == "unchanged" else "skipped"
            )
            error = unchecked.get(str(task.target))
            if error is not None:
                status = "failed"
            records.append(
                TaskRecord(
                    mirror=mirror.label,
                    target=str(task.target.repository_only()),
                    source_ref=str(task.source),
                    dest_ref=str(task.target),
                    reason=task.reason,
                    status=status,
                    source_digest=task.source_digest or None,
                    target_digest=task.target_digest or None,
                    immutable=_immutable(mirror, task),
                    error=f"referrers: {error}" if error is not None else None,
                )
            )
            continue
        records.append(
            TaskRecord(
                mirror=mirror.label,
                target=str(task.target.repository_only()),
                source_ref=str(task.source),
                dest_ref=str(task.target),
                reason=task.reason,
                status="skipped" if r.status == "planned" else r.status,
                source_digest=r.source_digest or task.source_digest or None,
                target_digest=r.destination_digest or None,
                bytes=r.bytes_copied,
                seconds=r.seconds,
                error=r.error or None,
                immutable=_immutable(mirror, task),
                blobs_copied=r.blobs_copied,
                blobs_mounted=r.blobs_mounted,
                blobs_skipped=r.blobs_skipped,
            )
        )
    return records


def _immutable(mirror: Mirror, task: PlannedTask) -> bool:
    return bool(task.source.tag) and is_immutable(mirror, task.source.tag or "")
