"""The state database of sync passes and the jobs API: `StateDB`, and the runs it records.

`StateDB` is the one object callers open (`async with StateDB(url) as db: ...`): the
engine, SQLite pragmas and migration are `connection.Database`'s, the jobs table's queries
`jobs.JobsDB`'s, the tables `schema`'s. This module adds the queries of sync passes: runs
started and finished, the result of each image a run looked at (`TaskRecord`), and the
last successful state of each destination reference (`synced`), upserted as tasks are
recorded and read back by the next pass.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, literal, select, union_all, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from . import runreads
from .connection import StateError
from .jobs import JobsDB
from .schema import (
    INTERRUPTED_ERROR,
    RUN_STATUSES,
    SYNCED_STATUSES,
    TASK_REASONS,
    TASK_STATUSES,
    TRIGGERS,
    RunStatus,
    TaskReason,
    TaskStatus,
    Trigger,
    as_utc,
    check_choice,
    runs,
    synced,
    task_results,
    utc_now,
)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What happened to one image in a run: one row of `task_results`."""

    mirror: str
    target: str
    source_ref: str
    dest_ref: str
    reason: TaskReason
    status: TaskStatus
    source_digest: str | None = None
    target_digest: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    immutable: bool = False
    finished_at: datetime = field(default_factory=utc_now)
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0

    def __post_init__(self) -> None:
        """Refuse unknown reasons and statuses, naive times, and a success without digests."""
        check_choice(self.reason, TASK_REASONS, "reason")
        check_choice(self.status, TASK_STATUSES, "status")
        as_utc(self.finished_at, "finished_at")
        if self.status in SYNCED_STATUSES and not (self.source_digest and self.target_digest):
            raise ValueError(
                f"a {self.status} task needs source_digest and target_digest ({self.dest_ref})"
            )


@dataclass(frozen=True, slots=True)
class SyncedRef:
    """The last successful state of one destination reference."""

    source_ref: str
    source_digest: str
    target_digest: str
    synced_at: datetime
    immutable: bool


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run of a mirror: trigger, status, times and counts."""

    id: int
    mirror: str
    trigger: Trigger
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    copied: int
    unchanged: int
    failed: int
    skipped: int
    bytes: int
    error: str | None


def _run_info(row: Row[Any]) -> RunInfo:
    """Build a RunInfo from a `runs` row."""
    m = row._mapping
    return RunInfo(
        id=int(m["id"]),
        mirror=m["mirror"],
        trigger=m["trigger"],
        status=m["status"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        copied=m["copied"],
        unchanged=m["unchanged"],
        failed=m["failed"],
        skipped=m["skipped"],
        bytes=m["bytes"],
        error=m["error"],
    )


def _synced_upsert(dialect_name: str) -> Insert:
    """Return the INSERT ... ON CONFLICT DO UPDATE of `synced` for this dialect.

    Each dialect's module is imported here, for the database in use: importing
    PostgreSQL's (0.1 s of CPU at a loaded start) cost every start on SQLite, `status`
    included.
    """
    if dialect_name == "sqlite":
        from sqlalchemy.dialects import sqlite

        lite = sqlite.insert(synced)
        return lite.on_conflict_do_update(**_upsert_clauses(lite.excluded))
    if dialect_name == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg = postgresql.insert(synced)
        return pg.on_conflict_do_update(**_upsert_clauses(pg.excluded))
    # normalise_url admits no other backend
    raise StateError(f"no upsert for database dialect {dialect_name!r}")


def _upsert_clauses(excluded: Any) -> dict[str, Any]:
    """The conflict target, the columns updated and the guard of `_synced_upsert`."""
    return {
        "index_elements": [synced.c.mirror, synced.c.dest_ref],
        "set_": {c.name: excluded[c.name] for c in synced.c if not c.primary_key},
        # A slow, older run finishing late must not undo what a newer one recorded.
        "where": synced.c.synced_at <= excluded.synced_at,
    }


async def write_tasks(conn: AsyncConnection, run_id: int, results: Sequence[TaskRecord]) -> None:
    """Write task results and their `synced` upserts in the caller's transaction."""
    if not results:
        return
    rows = [
        {
            "run_id": run_id,
            "mirror": r.mirror,
            "target": r.target,
            "source_ref": r.source_ref,
            "dest_ref": r.dest_ref,
            "reason": r.reason,
            "status": r.status,
            "source_digest": r.source_digest,
            "target_digest": r.target_digest,
            "bytes": r.bytes,
            "seconds": r.seconds,
            "immutable": r.immutable,
            "error": r.error,
            "finished_at": r.finished_at,
            "blobs_copied": r.blobs_copied,
            "blobs_mounted": r.blobs_mounted,
            "blobs_skipped": r.blobs_skipped,
        }
        for r in results
    ]
    # One row per key: PostgreSQL refuses to upsert a row twice in one statement.
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r.status in SYNCED_STATUSES:
            latest[(r.mirror, r.dest_ref)] = {
                "mirror": r.mirror,
                "dest_ref": r.dest_ref,
                "source_ref": r.source_ref,
                "source_digest": r.source_digest,
                "target_digest": r.target_digest,
                "synced_at": r.finished_at,
                "immutable": r.immutable,
            }
    await conn.execute(insert(task_results), rows)
    if latest:
        await conn.execute(_synced_upsert(conn.dialect.name), list(latest.values()))


class StateDB(JobsDB):
    """The state database: `async with StateDB(url) as db: ...`."""

    async def start_run(
        self, mirror: str, trigger: Trigger, *, started_at: datetime | None = None
    ) -> int:
        """Record a run of `mirror` as running and return its id."""
        check_choice(trigger, TRIGGERS, "trigger")
        started_at = as_utc(started_at, "started_at") if started_at else utc_now()
        async with self._write() as conn:
            result = await conn.execute(
                insert(runs).values(
                    mirror=mirror,
                    trigger=trigger,
                    status="running",
                    started_at=started_at,
                )
            )
            key = result.inserted_primary_key
            if key is None:  # pragma: no cover - both backends return the new id
                raise StateError("the database did not return the new run's id")
            return int(key[0])

    async def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        copied: int,
        unchanged: int,
        failed: int,
        skipped: int,
        bytes: int,
        error: str | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        """Record the end of a run: its status, counts and error."""
        check_choice(status, RUN_STATUSES, "status")
        if status == "running":
            raise ValueError("a finished run cannot be 'running'")
        finished_at = as_utc(finished_at, "finished_at") if finished_at else utc_now()
        async with self._write() as conn:
            result = await conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    status=status,
                    finished_at=finished_at,
                    copied=copied,
                    unchanged=unchanged,
                    failed=failed,
                    skipped=skipped,
                    bytes=bytes,
                    error=error,
                )
            )
            if result.rowcount == 0:
                raise LookupError(f"no run with id {run_id}")

    async def record_task(self, run_id: int, result: TaskRecord) -> None:
        """Record one task's result; a copied or unchanged one also updates `synced`."""
        await self.record_tasks(run_id, [result])

    async def record_tasks(self, run_id: int, results: Sequence[TaskRecord]) -> None:
        """Record many task results (and their `synced` upserts) in one transaction."""
        if not results:
            return
        async with self._write() as conn:
            await write_tasks(conn, run_id, results)

    async def synced(self, mirror: str) -> dict[str, SyncedRef]:
        """Return the last successful state of each destination reference of `mirror`."""
        stmt = select(synced).where(synced.c.mirror == mirror)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {
            row.dest_ref: SyncedRef(
                source_ref=row.source_ref,
                source_digest=row.source_digest,
                target_digest=row.target_digest,
                synced_at=row.synced_at,
                immutable=bool(row.immutable),
            )
            for row in rows
        }

    async def synced_under(
        self, where: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, str | None]]:
        """Count, per (mirror, repository or prefix), the references `synced` holds under it
        (`REPO:tag`, `REPO@digest` or `REPO/...`), with the smallest target digest: one
        statement, the counting done by the database."""
        wanted = list(dict.fromkeys(where))
        if not wanted:
            return {}
        parts = []
        for i, (mirror, repo) in enumerate(wanted):
            head = func.substr(synced.c.dest_ref, 1, len(repo) + 1)
            parts.append(
                select(
                    literal(i).label("i"),
                    func.count().label("n"),
                    func.min(synced.c.target_digest).label("digest"),
                ).where(
                    synced.c.mirror == mirror,
                    head.in_([repo + ":", repo + "@", repo + "/"]),
                )
            )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(union_all(*parts))).all()
        return {wanted[int(i)]: (int(n), digest) for i, n, digest in rows}

    async def last_runs(self, mirrors: Sequence[str] | None = None) -> dict[str, RunInfo]:
        """Return the latest run of each mirror (of those named in `mirrors`, when given).

        Naming the mirrors bounds the work by their number, not by the runs recorded: one
        statement, an index lookup per mirror.
        """
        if mirrors is not None:
            rows = await self._per_mirror(mirrors, limit=1)
            return {row.mirror: _run_info(row) for row in rows}
        latest = select(func.max(runs.c.id).label("id")).group_by(runs.c.mirror).subquery()
        stmt = select(runs).join(latest, runs.c.id == latest.c.id).order_by(runs.c.mirror)
        async with self.engine.connect() as conn:
            found = (await conn.execute(stmt)).all()
        return {row.mirror: _run_info(row) for row in found}

    async def _per_mirror(self, mirrors: Sequence[str], *, limit: int) -> list[Row[Any]]:
        """The newest `limit` runs of each mirror, in one statement."""
        names = list(dict.fromkeys(mirrors))
        if not names:
            return []
        stmt = runreads.newest_runs(len(names), limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt, runreads.mirror_params(names))).all())

    async def last_runs_and_successes(
        self, mirrors: Sequence[str]
    ) -> tuple[dict[str, RunInfo], dict[str, datetime]]:
        """`last_runs(mirrors)` and `last_successes(mirrors)` in one statement: what a poll
        of the mirrors' status reads, one round trip instead of two."""
        names = list(dict.fromkeys(mirrors))
        if not names:
            return {}, {}
        stmt = runreads.latest_with_success(len(names))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt, runreads.mirror_params(names))).all()
        last = {row.mirror: _run_info(row) for row in rows}
        return last, {row.mirror: row.last_ok for row in rows if row.last_ok is not None}

    async def last_success(self, mirror: str) -> datetime | None:
        """Return when the latest run of `mirror` with status ok finished, or None."""
        stmt = select(func.max(runs.c.finished_at)).where(
            runs.c.mirror == mirror, runs.c.status == "ok"
        )
        async with self.engine.connect() as conn:
            value: datetime | None = await conn.scalar(stmt)
        return value

    async def last_successes(self, mirrors: Sequence[str] | None = None) -> dict[str, datetime]:
        """Return, per mirror with one, when its latest run with status ok finished.

        With `mirrors`, only those, each an index lookup (mirror, status, finished_at).
        """
        if mirrors is not None:
            names = list(dict.fromkeys(mirrors))
            if not names:
                return {}
            stmt = runreads.last_successes(len(names))
            async with self.engine.connect() as conn:
                found = (await conn.execute(stmt, runreads.mirror_params(names))).all()
            return {names[int(i)]: at for i, at in found if at is not None}
        stmt = (
            select(runs.c.mirror, func.max(runs.c.finished_at))
            .where(runs.c.status == "ok")
            .group_by(runs.c.mirror)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {mirror: at for mirror, at in rows if at is not None}

    async def recent_runs(
        self, limit: int = 20, mirrors: Sequence[str] | None = None
    ) -> dict[str, list[RunInfo]]:
        """Return the latest `limit` runs of every mirror (or of `mirrors`), newest first, in
        one query; naming the mirrors reads only their `limit` newest runs each."""
        out: dict[str, list[RunInfo]] = {}
        if mirrors is not None:
            found = await self._per_mirror(mirrors, limit=limit)
            for row in sorted(found, key=lambda r: (r.mirror, -r.id)):
                out.setdefault(row.mirror, []).append(_run_info(row))
            return out
        rank = (
            func.row_number()
            .over(partition_by=runs.c.mirror, order_by=runs.c.id.desc())
            .label("rank")
        )
        ranked = select(runs, rank).subquery()
        stmt = (
            select(ranked)
            .where(ranked.c.rank <= limit)
            .order_by(ranked.c.mirror, ranked.c.id.desc())
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        for row in rows:
            out.setdefault(row.mirror, []).append(_run_info(row))
        return out

    async def runs(self, mirror: str, limit: int = 20) -> list[RunInfo]:
        """Return the latest runs of `mirror`, newest first."""
        stmt = select(runs).where(runs.c.mirror == mirror).order_by(runs.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_run_info(row) for row in rows]

    async def interrupt_running(self) -> int:
        """Mark runs and jobs still running (their process died) as interrupted; count them."""
        return await self.interrupt_runs() + await self.interrupt_jobs()

    async def interrupt_runs(self, mirror: str | None = None, keep: Collection[int] = ()) -> int:
        """Mark runs still 'running' (of one mirror, or all) as interrupted, but those in
        `keep` (held by queue workers, not by a process); count them."""
        stmt = update(runs).where(runs.c.status == "running")
        if mirror is not None:
            stmt = stmt.where(runs.c.mirror == mirror)
        if keep:
            stmt = stmt.where(runs.c.id.not_in(list(keep)))
        stmt = stmt.values(
            status="interrupted",
            finished_at=utc_now(),
            error=func.coalesce(runs.c.error, INTERRUPTED_ERROR),
        )
        async with self._write() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount)
