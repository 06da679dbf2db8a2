"""The jobs of the HTTP service in the state database: their request, state and results.

One row of `jobs` per job (`schema.jobs`); `service/jobs.py` writes it when a job starts,
as its entries finish and when it ends, and reads finished jobs back from it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.engine import Row

from .connection import Database
from .schema import (
    INTERRUPTED_ERROR,
    JOB_FINAL_STATES,
    JOB_STATES,
    JobState,
    UTCDateTime,
    check_choice,
    jobs,
    utc_now,
)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job of the HTTP service: its request, state, progress and result."""

    id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    request: dict[str, Any]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None


def _job_info(row: Row[Any]) -> JobInfo:
    """Build a JobInfo from a `jobs` row."""
    m = row._mapping
    return JobInfo(
        id=m["id"],
        state=m["state"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        request=m["request"],
        progress=m["progress"],
        result=m["result"],
        error=m["error"],
    )


class JobsDB(Database):
    """The queries of the `jobs` table (`StateDB` has them all)."""

    async def interrupt_jobs(self, keep: Collection[str] = ()) -> int:
        """Mark jobs left 'queued' or 'running' as interrupted, but those in `keep`; count them."""
        stmt = update(jobs).where(jobs.c.state.in_(("queued", "running")))
        if keep:
            stmt = stmt.where(jobs.c.id.not_in(list(keep)))
        stmt = stmt.values(
            state="interrupted",
            finished_at=utc_now(),
            error=func.coalesce(jobs.c.error, INTERRUPTED_ERROR),
        )
        async with self._write() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount)

    async def create_job(self, request: dict[str, Any]) -> str:
        """Record a queued job for `request` and return its id (a UUID)."""
        job_id = str(uuid.uuid4())
        async with self._write() as conn:
            await conn.execute(
                insert(jobs).values(
                    id=job_id, state="queued", created_at=utc_now(), request=request
                )
            )
        return job_id

    async def update_job(
        self,
        job_id: str,
        *,
        state: JobState | None = None,
        progress: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Change what is given of a job; running sets started_at, a final state finished_at."""
        values: dict[str, Any] = {}
        now = utc_now()
        if state is not None:
            check_choice(state, JOB_STATES, "state")
            values["state"] = state
            if state == "running":
                values["started_at"] = func.coalesce(jobs.c.started_at, literal(now, UTCDateTime()))
            elif state in JOB_FINAL_STATES:
                values["finished_at"] = now
        if progress is not None:
            values["progress"] = progress
        if result is not None:
            values["result"] = result
        if error is not None:
            values["error"] = error
        if not values:
            return
        async with self._write() as conn:
            updated = await conn.execute(update(jobs).where(jobs.c.id == job_id).values(values))
            if updated.rowcount == 0:
                raise LookupError(f"no job with id {job_id}")

    async def get_job(self, job_id: str) -> JobInfo | None:
        """Return a job, or None if there is none with that id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return None if row is None else _job_info(row)

    async def list_jobs(self, limit: int = 50) -> list[JobInfo]:
        """Return the latest jobs, newest first."""
        stmt = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_job_info(row) for row in rows]
