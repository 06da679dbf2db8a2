"""procrastinate's finished jobs older than `keep_history` go (a worker prunes them hourly).

procrastinate keeps every job it finished (and its events) unless asked to delete it;
its `delete_old_jobs` reads the database's clock and deletes in one statement. This
deletes the copy jobs (queues `ocimirror:*`) that ended (succeeded, failed, cancelled,
aborted) with no event since the limit, `batch` at a time, each batch its own short
transaction; their events go with them (`ON DELETE CASCADE`). A job to do or being done
is never touched. The state database's own history (runs, their per-image results, the
ledger rows of queued passes, the jobs API's jobs) is pruned by `state.retention`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text

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


async def prune_queue(
    state: StateDB, keep: timedelta, *, now: datetime | None = None, batch: int = BATCH
) -> int:
    """Delete the copy jobs that ended before `now - keep`; count them."""
    cutoff = (as_utc(now, "now") if now is not None else utc_now()) - keep
    deleted = 0
    while True:
        async with state.write() as conn:
            done = await conn.execute(
                _DELETE, {"queues": QUEUE_PREFIX + "%", "cutoff": cutoff, "batch": batch}
            )
        deleted += int(done.rowcount or 0)
        if not done.rowcount:
            return deleted
