"""The ledger of queued copies: which pass waits for which copy, and who closes the pass.

A pass that sends its copies to the queue writes, in one transaction, a `queued_runs` row
(what its planner already counted) and one `queued_copies` row per copy. A worker that
finished a copy records it with `record_copy`: in one transaction every row still open
for that destination is marked done (so a copy joined by a second pass through the
queueing lock answers both) and its result becomes each run's `task_results` row (and
`synced` upsert) exactly as an in-process pass writes it. A retried copy (its worker died
after recording) finds no open row and records nothing twice.

Then, after that commit, a run left with no open copy is finished by that worker
(`close_if_done`): of two workers finishing a run's last two copies at once, the one
committing last looks after both commits and sees none open; the close holds the run's
`queued_runs` row `FOR UPDATE` and counts again, so it happens once. Copies never wait
for each other on that row: only a look that finds nothing open takes it. A worker dying
between its record and its look is covered by the retry of its copy, which looks at the
runs still running that awaited that destination.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..state.db import StateDB, TaskRecord, write_tasks
from ..state.schema import RunStatus, TaskReason, runs, task_results
from ..transfer.copy import ImageResult
from .schema import queued_copies, queued_runs

#: Failure lines a finished run keeps in its `error` (as an in-process pass does).
ERROR_LINES = 3


@dataclass(frozen=True)
class QueuedCopy:
    """One copy a pass sent to the queue, with what its task result will say."""

    mirror: str
    target: str
    source_ref: str
    dest_ref: str
    reason: TaskReason
    source_digest: str | None = None
    immutable: bool = False


@dataclass(frozen=True)
class PlannerCounts:
    """What the planner of a queued pass counted itself (the workers count the copies)."""

    unchanged: int = 0
    good: int = 0
    failed: int = 0
    errors: tuple[str, ...] = ()


async def queue_pass(
    state: StateDB,
    run_id: int,
    mirror: str,
    copies: Sequence[QueuedCopy],
    counts: PlannerCounts,
) -> None:
    """Write the ledger of a pass whose copies are about to be enqueued."""
    async with state.write() as conn:
        await conn.execute(
            insert(queued_runs).values(
                run_id=run_id,
                mirror=mirror,
                unchanged=counts.unchanged,
                good=counts.good,
                failed=counts.failed,
                errors=list(counts.errors[:ERROR_LINES]),
            )
        )
        if copies:
            await conn.execute(
                insert(queued_copies),
                [
                    {
                        "run_id": run_id,
                        "mirror": c.mirror,
                        "target": c.target,
                        "source_ref": c.source_ref,
                        "dest_ref": c.dest_ref,
                        "reason": c.reason,
                        "source_digest": c.source_digest,
                        "immutable": c.immutable,
                    }
                    for c in copies
                ],
            )


def _record(row: Any, result: ImageResult) -> TaskRecord:
    """The task result of one ledger row, from the copy's result."""
    status = "skipped" if result.status == "planned" else result.status
    return TaskRecord(
        mirror=row.mirror,
        target=row.target,
        source_ref=row.source_ref,
        dest_ref=row.dest_ref,
        reason=row.reason,
        status=status,
        source_digest=result.source_digest or row.source_digest or None,
        target_digest=result.destination_digest or None,
        bytes=result.bytes_copied,
        seconds=result.seconds,
        error=result.error or None,
        immutable=bool(row.immutable),
        blobs_copied=result.blobs_copied,
        blobs_mounted=result.blobs_mounted,
        blobs_skipped=result.blobs_skipped,
    )


async def record_copy(state: StateDB, destination: str, result: ImageResult) -> list[int]:
    """Record a finished copy for every pass awaiting `destination`; return the runs closed."""
    async with state.write() as conn:
        rows = (
            await conn.execute(
                update(queued_copies)
                .where(queued_copies.c.dest_ref == destination, queued_copies.c.done.is_(False))
                .values(done=True)
                .returning(*queued_copies.c)
            )
        ).all()
        by_run: dict[int, list[TaskRecord]] = {}
        for row in rows:
            by_run.setdefault(int(row.run_id), []).append(_record(row, result))
        for run_id, records in sorted(by_run.items()):
            await write_tasks(conn, run_id, records)
    # Nothing marked: a retried copy whose worker died after recording it, perhaps before
    # closing its pass; look at the passes still running that awaited it.
    run_ids = sorted(by_run) if by_run else await _running_awaiting(state, destination)
    return [run_id for run_id in run_ids if await close_if_done(state, run_id)]


async def _running_awaiting(state: StateDB, destination: str) -> list[int]:
    stmt = (
        select(queued_copies.c.run_id)
        .join(runs, runs.c.id == queued_copies.c.run_id)
        .where(queued_copies.c.dest_ref == destination, runs.c.status == "running")
        .distinct()
    )
    async with state.engine.connect() as conn:
        return sorted(int(r) for r in (await conn.execute(stmt)).scalars())


async def _open_copies(conn: AsyncConnection, run_id: int) -> int:
    value = await conn.scalar(
        select(func.count())
        .select_from(queued_copies)
        .where(queued_copies.c.run_id == run_id, queued_copies.c.done.is_(False))
    )
    return int(value or 0)


async def close_if_done(state: StateDB, run_id: int) -> bool:
    """Finish a run with no open copy left, counting as an in-process pass does.

    Called after the copy's own transaction committed: of two workers finishing a run's
    last two copies at once, the one committing last looks after both commits and sees
    none open. The closing itself holds the run's `queued_runs` row, so it happens once.
    """
    async with state.engine.connect() as conn:
        if await _open_copies(conn, run_id):
            return False
    async with state.write() as conn:
        planner = (
            await conn.execute(
                select(queued_runs).where(queued_runs.c.run_id == run_id).with_for_update()
            )
        ).one()
        if await _open_copies(conn, run_id):
            return False
        stmt = select(task_results.c.status, task_results.c.bytes).where(
            task_results.c.run_id == run_id
        )
        rows = (await conn.execute(stmt)).all()
        failed_copies = [
            f"{r.source_ref} → {r.dest_ref}: {r.error}"
            for r in (
                await conn.execute(
                    select(task_results.c.source_ref, task_results.c.dest_ref, task_results.c.error)
                    .where(task_results.c.run_id == run_id, task_results.c.status == "failed")
                    .order_by(task_results.c.id)
                    .limit(ERROR_LINES)
                )
            ).all()
        ]
        failed = sum(1 for r in rows if r.status == "failed") + planner.failed
        good = sum(1 for r in rows if r.status != "failed") + planner.good
        status: RunStatus = "ok" if not failed else "partial" if good else "failed"
        lines = [*planner.errors, *failed_copies][:ERROR_LINES]
        result = await conn.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == "running")
            .values(
                status=status,
                finished_at=func.now(),
                copied=sum(1 for r in rows if r.status == "copied"),
                unchanged=planner.unchanged,
                failed=failed,
                skipped=sum(1 for r in rows if r.status == "skipped"),
                bytes=sum(int(r.bytes) for r in rows),
                error="; ".join(lines) or None,
            )
        )
        return bool(result.rowcount)


async def run_status(state: StateDB, run_id: int) -> str | None:
    """The status of a run (None: no such run)."""
    async with state.engine.connect() as conn:
        value: str | None = await conn.scalar(select(runs.c.status).where(runs.c.id == run_id))
    return value


async def wait_run(state: StateDB, run_id: int, *, poll: float = 0.5) -> str:
    """Wait until the workers finished a run; return its status."""
    while True:
        status = await run_status(state, run_id)
        if status is None:
            raise LookupError(f"no run with id {run_id}")
        if status != "running":
            return status
        await asyncio.sleep(poll)


async def copy_results(state: StateDB, run_id: int) -> list[ImageResult]:
    """The image results the workers recorded for a run's queued copies."""
    queued = select(queued_copies.c.dest_ref).where(queued_copies.c.run_id == run_id)
    stmt = (
        select(task_results)
        .where(task_results.c.run_id == run_id, task_results.c.dest_ref.in_(queued))
        .order_by(task_results.c.id)
    )
    async with state.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    out = []
    for r in rows:
        status: Literal["copied", "unchanged", "failed", "skipped"] = r.status
        out.append(
            ImageResult(
                r.source_ref,
                r.dest_ref,
                status=status,
                source_digest=r.source_digest or "",
                destination_digest=r.target_digest or "",
                bytes_copied=int(r.bytes),
                seconds=float(r.seconds),
                error=r.error or "",
                blobs_copied=int(r.blobs_copied),
                blobs_mounted=int(r.blobs_mounted),
                blobs_skipped=int(r.blobs_skipped),
            )
        )
    return out


async def open_runs(state: StateDB) -> set[int]:
    """The runs still waiting for queued copies (their workers, not a process, hold them)."""
    stmt = select(queued_copies.c.run_id).where(queued_copies.c.done.is_(False)).distinct()
    async with state.engine.connect() as conn:
        return {int(r) for r in (await conn.execute(stmt)).scalars()}
