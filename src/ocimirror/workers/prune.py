"""The queue's history older than `keep_history` goes (a worker prunes it hourly).

procrastinate keeps every job it finished (and its events) unless asked to delete it;
its `delete_old_jobs` reads the database's clock and deletes in one statement. This
deletes the copy jobs (queues `ocimirror:*`) that ended (succeeded, failed, cancelled,
aborted) with no event since the limit, `batch` at a time, each batch its own short
transaction; their events go with them (`ON DELETE CASCADE`). A job to do or being done
is never touched. The ledger rows of the copies of passes finished before the limit go
too, `batch` at a time (their `ocimirror_queued_runs` row goes with the run, which
`state.retention` prunes with the rest of the state database's history: runs, their
per-image results, the jobs API's jobs), so no single delete cascades over a whole
pass's copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import TextClause, text

from ..state.db import StateDB
from ..state.schema import as_utc, utc_now
from .queue import QUEUE_PREFIX

#: Jobs deleted per transaction.
BATCH = 1000

_DELETE = text(
    """
    DELETE FROM procrastinate_jobs WHERE id IN (
        SELECT j.id FROM procrastinate_jobs j
        WHERE j.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
          AND j.queue_name LIKE :queues
          AND NOT EXISTS (
              SELECT 1 FROM procrastinate_events e WHERE e.job_id = j.id AND e.at >= :cutoff
          )
        ORDER BY j.id
        LIMIT :batch
    )
    """
)


_DELETE_COPIES = text(
    """
    DELETE FROM ocimirror_queued_copies WHERE id IN (
        SELECT c.id FROM ocimirror_queued_copies c JOIN runs r ON r.id = c.run_id
        WHERE r.status != 'running' AND r.finished_at < :cutoff
        ORDER BY c.id
        LIMIT :batch
    )
    """
)


@dataclass(frozen=True)
class QueuePruned:
    """What one prune of the queue deleted."""

    jobs: int = 0
    copies: int = 0


async def _batches(state: StateDB, statement: TextClause, params: dict[str, Any]) -> int:
    deleted = 0
    while True:
        async with state.write() as conn:
            done = await conn.execute(statement, params)
        deleted += int(done.rowcount or 0)
        if not done.rowcount:
            return deleted


async def prune_queue(
    state: StateDB, keep: timedelta, *, now: datetime | None = None, batch: int = BATCH
) -> QueuePruned:
    """Delete the copy jobs that ended, and old passes' ledger copies, before `now - keep`."""
    cutoff = (as_utc(now, "now") if now is not None else utc_now()) - keep
    params = {"queues": QUEUE_PREFIX + "%", "cutoff": cutoff, "batch": batch}
    jobs = await _batches(state, _DELETE, params)
    copies = await _batches(state, _DELETE_COPIES, {"cutoff": cutoff, "batch": batch})
    return QueuePruned(jobs=jobs, copies=copies)
