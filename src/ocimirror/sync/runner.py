"""One sync pass over the configured mirrors: plan, copy what is needed, remember it.

The same function serves `ocimirror sync`, the daemon and `serve -c`. Planning is the
sync planner's (reasons, the state database); the copies after it are the engine's
(`transfer.engine.execute`), the sequence every face runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from ..client import HostOptions
from ..reference import Reference
from ..settings.config import Config, Mirror
from ..settings.connection import host_options, pool_for
from ..state.db import StateDB, TaskRecord
from ..stores.pool import StorePool
from ..stores.schemes import scheme_for
from ..transfer.copy import Copier, CopyOptions, ImageResult, Progress
from ..transfer.engine import Side, Stores, execute
from ..transfer.plan import CopyTask
from .planner import Known, Plan, PlannedTask, is_immutable, plan_mirror

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

    @property
    def failed(self) -> list[str]:
        """Every failure of the pass, one line each."""
        lines = [f"{e.reference}: {e.error}" for e in self.plan.errors]
        lines += [f"{r.source} → {r.destination}: {r.error}" for r in self.results if r.error]
        return lines

    @property
    def status(self) -> Literal["ok", "partial", "failed"]:
        """`ok`, `partial` (some failures) or `failed` (nothing succeeded)."""
        bad = len(self.failed)
        if not bad:
            return "ok"
        good = sum(1 for r in self.results if r.status != "failed")
        good += sum(1 for t in self.plan.tasks if not t.needs_copy)
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
    run_id = None
    if state is not None:
        synced = await state.synced(mirror.label)
        known = {k: Known(v.source_digest, v.target_digest, v.synced_at) for k, v in synced.items()}
        if mode != "dry-run":
            run_id = await state.start_run(mirror.label, trigger)
    plan = await plan_mirror(
        mirror,
        store_for=stores,
        known=known,
        concurrency=config.concurrency * 2,
        trusted_since=trusted_since if state is not None else None,
    )
    result = MirrorPass(mirror.label, plan, run_id=run_id)
    if mode != "dry-run":
        todo = [t for t in plan.tasks if t.needs_copy and (mode == "all" or t.reason != "changed")]
        copier = Copier(
            options=CopyOptions(
                platforms=tuple(mirror.platforms or ()),
                include_foreign=bool(mirror.include_foreign),
            ),
            image_concurrency=config.concurrency,
            progress=progress,
        )
        # The planner listed and HEADed the targets already: nothing more to list.
        result.results = await execute(
            [_task(t) for t in todo],
            stores=stores,
            copier=copier,
            listing="none",
            absent=sorted(plan.new_targets, key=str),
        )
    result.seconds = time.monotonic() - started
    if state is not None and run_id is not None:
        await _record(state, run_id, mirror, result)
    return result


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


async def _record(state: StateDB, run_id: int, mirror: Mirror, done: MirrorPass) -> None:
    """Write the pass's task results and the run's outcome in two transactions."""
    by_target = {r.destination: r for r in done.results}
    records: list[TaskRecord] = []
    for task in done.plan.tasks:
        if task.reason == "immutable" or task.trusted:
            # Nothing was asked of the target, nothing new to remember: `synced_at` stays
            # the last time the target was looked at, which `verify_every` counts from.
            continue
        r = by_target.get(str(task.target))
        if r is None:  # not copied: unchanged, or a changed tag in missing-only mode
            status: Literal["unchanged", "skipped"] = (
                "unchanged" if task.reason == "unchanged" else "skipped"
            )
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
                status="failed" if r.status == "failed" else r.status,
                source_digest=r.source_digest or task.source_digest or None,
                target_digest=r.destination_digest or None,
                bytes=r.bytes_copied,
                seconds=r.seconds,
                error=r.error or None,
                immutable=_immutable(mirror, task),
            )
        )
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


def _immutable(mirror: Mirror, task: PlannedTask) -> bool:
    return bool(task.source.tag) and is_immutable(mirror, task.source.tag or "")
