"""Retention: the state database forgets finished runs and jobs older than `keep_history`.

A run older than the limit (by when it finished) goes with its per-image results
(`task_results`), unless it is its mirror's latest run or latest successful one: `status`,
the dashboard and the scheduler read those, so a mirror idle for months still shows its
last pass. A run still running is never touched. Finished jobs of the jobs API older than
the limit go too. On PostgreSQL with `execution: workers` the ledger of a queued pass
(`ocimirror_queued_runs`, `ocimirror_queued_copies`) references its run `ON DELETE
CASCADE`, so it goes with the run.

Deletes run in bounded batches (`batch` runs, `rows` result rows per statement), each its
own short transaction, so a first prune of a large history never holds the database long.
`now` is injected (tests move it; callers pass nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, delete, func, or_, select

from .db import StateDB
from .schema import JOB_FINAL_STATES, as_utc, jobs, runs, task_results, utc_now

log = structlog.get_logger(__name__)

#: Seconds between prunes of a long-running process (serve, the daemon, a worker).
EVERY = 3600.0
#: Runs deleted per transaction.
BATCH = 100
#: Result rows (task_results) deleted per statement.
ROWS = 5000


@dataclass(frozen=True)
class Pruned:
    """What one prune deleted."""

    runs: int = 0
    tasks: int = 0
    jobs: int = 0


async def prune(
    state: StateDB,
    keep: timedelta,
    *,
    now: datetime | None = None,
    batch: int = BATCH,
    rows: int = ROWS,
) -> Pruned:
    """Delete finished runs (with their results) and jobs older than `keep`; count them."""
    cutoff = as_utc(now, "now") if now is not None else utc_now()
    cutoff -= keep
    # Each mirror's latest run, and its latest successful run, stay.
    latest = select(func.max(runs.c.id)).group_by(runs.c.mirror).scalar_subquery()
    latest_ok = (
        select(func.max(runs.c.id)).where(runs.c.status == "ok").group_by(runs.c.mirror)
    ).scalar_subquery()
    old_runs = (
        select(runs.c.id)
        .where(
            runs.c.status != "running",
            func.coalesce(runs.c.finished_at, runs.c.started_at) < cutoff,
            runs.c.id.not_in(latest),
            runs.c.id.not_in(latest_ok),
        )
        .order_by(runs.c.id)
        .limit(batch)
    )
    n_runs = n_tasks = 0
    while True:
        async with state.engine.connect() as conn:
            ids = [int(i) for i in (await conn.execute(old_runs)).scalars()]
        if not ids:
            break
        while True:  # their results, `rows` at a time
            some = select(task_results.c.id).where(task_results.c.run_id.in_(ids)).limit(rows)
            async with state.write() as conn:
                done = await conn.execute(delete(task_results).where(task_results.c.id.in_(some)))
            n_tasks += int(done.rowcount or 0)
            if not done.rowcount:
                break
        async with state.write() as conn:
            done = await conn.execute(
                delete(runs).where(runs.c.id.in_(ids), runs.c.status != "running")
            )
        n_runs += int(done.rowcount or 0)
    old_jobs = (
        select(jobs.c.id)
        .where(
            jobs.c.state.in_(sorted(JOB_FINAL_STATES)),
            or_(
                jobs.c.finished_at < cutoff,
                and_(jobs.c.finished_at.is_(None), jobs.c.created_at < cutoff),
            ),
        )
        .limit(batch)
    )
    n_jobs = 0
    while True:
        async with state.write() as conn:
            done = await conn.execute(delete(jobs).where(jobs.c.id.in_(old_jobs)))
        n_jobs += int(done.rowcount or 0)
        if not done.rowcount:
            break
    return Pruned(runs=n_runs, tasks=n_tasks, jobs=n_jobs)


async def prune_logged(state: StateDB, keep: timedelta | None) -> Pruned | None:
    """Prune (`keep` None: keep everything), logging what went; a failure is logged only."""
    if keep is None:
        return None
    try:
        pruned = await prune(state, keep)
    except Exception:  # the database may be restarting: next time
        log.exception("could not prune the state database's history")
        return None
    if pruned.runs or pruned.jobs:
        log.info("history pruned", runs=pruned.runs, tasks=pruned.tasks, jobs=pruned.jobs)
    return pruned


async def prune_every(state: StateDB, keep: timedelta | None, every: float = EVERY) -> None:
    """Prune now and then every `every` seconds, until cancelled."""
    if keep is None:
        return
    while True:
        await prune_logged(state, keep)
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def pruning(state: StateDB, keep: timedelta | None) -> AsyncIterator[None]:
    """Prune `state` every `EVERY` seconds while in the block (a prune in course is stopped)."""
    task = asyncio.create_task(prune_every(state, keep), name="ocimirror prune")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
