"""The jobs API on the queue: a job handed to the workers, which finish it.

With `execution: workers` a job of `serve`'s jobs API plans each entry in `serve` (the
engine's `plan`: which images, which tags) and then hands the job over (`hand_over`): in
one transaction its `ocimirror_queued_jobs` row (its parallelism), one
`ocimirror_job_images` row per image copy (its entry, the copy's arguments) and the job's
row in `jobs`, running, with the entries `serve` decided itself (a bad entry, a failed
plan, nothing to copy). The copies of its first `parallelism` entries are then deferred,
as a sync pass's are (same task, same locks on the destination, so a copy already queued
for a destination is joined).

From then on the job is the workers'. The worker that records a destination (`record`)
marks every row awaiting it done with the image's result, and then settles each job
concerned (`settle`), holding its `jobs` row `FOR UPDATE`: an entry whose images are all
recorded gets its result (`transfer.outcome.Outcome`, as in-process), the next entries
waiting are deferred to keep `parallelism` in flight, and the worker that sees the last
entry finished finishes the job: state, progress, entries and error written as
`serve`'s in-process path writes them; the job's ledger rows then go. `serve` reads the job back from the database, so a
job survives `serve` restarting (or being killed). A worker dying between its record and
its settle is covered by the retry of its copy, which settles the running jobs that
awaited that destination; a worker dying after deferring the next entries and before
its commit left copies whose records settle the job again.

Cancelling a job (`cancel`, from any `serve`) marks it cancelled (its unfinished entries
"cancelled before the copy finished") and aborts the copies it deferred itself
(`cancel_job_by_id(abort=True)`): procrastinate cancels those still queued and asks the
worker holding a running one to cancel it. It then waits until none of them runs any
more, so when a cancel returns no copy of the job starts a new upload. A copy the job
joined (deferred by a sync pass or another job) is not aborted: it is not only this
job's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import delete, insert, select, update

from ..metrics import tally
from ..state.db import StateDB
from ..state.jobs import JobInfo
from ..state.schema import JOB_FINAL_STATES, jobs, utc_now
from ..transfer.copy import ImageResult
from ..transfer.outcome import Outcome
from .queue import CopyJob, defer_each, make_app
from .schema import ensure_schema, job_copies, queued_jobs

if TYPE_CHECKING:
    from procrastinate import App
    from sqlalchemy.ext.asyncio import AsyncConnection

log = structlog.get_logger(__name__)

#: Seconds between looks at a handed-over job while `serve` awaits it.
POLL = 0.2
#: The error of an entry whose job was cancelled before it finished (as in-process).
CANCELLED_ERROR = "cancelled before the copy finished"
#: Entry statuses not final yet, and those that make a job fail (as in-process).
_OPEN = frozenset({"pending", "running"})
_BAD = frozenset({"failed", "cancelled"})
#: The fields of an ImageResult a worker records for the jobs API.
_FIELDS = (
    "source",
    "destination",
    "status",
    "source_digest",
    "destination_digest",
    "bytes_copied",
    "blobs_copied",
    "blobs_mounted",
    "blobs_skipped",
    "manifests_pushed",
    "seconds",
    "error",
    "public_error",
    "reason",
)


def _to_json(result: ImageResult) -> dict[str, Any]:
    data = asdict(result)
    return {k: data[k] for k in _FIELDS}


def _from_json(data: Mapping[str, Any], destination: str) -> ImageResult:
    # A joined copy recorded under its own destination spelling: ours.
    return ImageResult(**{**{k: data[k] for k in _FIELDS if k in data}, "destination": destination})


def job_json(entries: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `result` and `progress` of a job's row, from its entries (as in-process)."""
    errors = [
        {"index": e["index"], "name": e["name"], "error": e.get("error") or e["status"]}
        for e in sorted(entries, key=lambda e: int(e["index"]))
        if e["status"] in _BAD
    ]
    progress = {
        "done": sum(1 for e in entries if e["status"] not in _OPEN),
        "total": len(entries),
        "bytes": sum(int(e.get("bytes") or 0) for e in entries),
    }
    return {"entries": list(entries), "errors": errors}, progress


async def record(
    state: StateDB, destination: str, result: ImageResult, app: App | None = None
) -> int:
    """Answer every job image awaiting `destination`, settle those jobs; count the rows."""
    async with state.write() as conn:
        rows = (
            await conn.execute(
                update(job_copies)
                .where(job_copies.c.dest_ref == destination, job_copies.c.done.is_(False))
                .values(done=True, result=_to_json(result))
                .returning(job_copies.c.job_id)
            )
        ).all()
    job_ids = sorted({str(r.job_id) for r in rows})
    if not rows:  # a retried copy: settle the running jobs that awaited it
        job_ids = await _running_awaiting(state, destination)
    for job_id in job_ids:
        await settle(state, job_id, app)
    return len(rows)


async def _running_awaiting(state: StateDB, destination: str) -> list[str]:
    stmt = (
        select(job_copies.c.job_id)
        .join(jobs, jobs.c.id == job_copies.c.job_id)
        .where(job_copies.c.dest_ref == destination, jobs.c.state == "running")
        .distinct()
    )
    async with state.engine.connect() as conn:
        return sorted(str(r) for r in (await conn.execute(stmt)).scalars())


async def settle(state: StateDB, job_id: str, app: App | None = None) -> str | None:
    """Record a handed-over job's finished entries, admit the next, finish it when done.

    Returns the job's state afterwards (None: no such job held by the queue). Without
    `app`, waiting entries are not deferred (a look only).
    """
    async with state.write() as conn:
        job = (
            await conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update())
        ).first()
        parallelism = await conn.scalar(
            select(queued_jobs.c.parallelism).where(queued_jobs.c.job_id == job_id)
        )
        if job is None or parallelism is None:
            return None
        if job.state != "running":
            return str(job.state)
        rows = (
            await conn.execute(
                select(job_copies).where(job_copies.c.job_id == job_id).order_by(job_copies.c.id)
            )
        ).all()
        entries = [dict(e) for e in (job.result or {}).get("entries") or []]
        by_entry: dict[int, list[Any]] = {}
        for r in rows:
            by_entry.setdefault(int(r.entry), []).append(r)
        for index, mine in by_entry.items():
            entry = entries[index]
            if entry["status"] in _OPEN and all(r.done for r in mine):
                results = [_from_json(r.result or {}, r.dest_ref) for r in mine]
                entry.update(Outcome.of(results).fields())
        if app is not None:
            await _admit(conn, app, int(parallelism), entries, by_entry)
        result, progress = job_json(entries)
        values: dict[str, Any] = {"result": result, "progress": progress}
        if all(e["status"] not in _OPEN for e in entries):
            # What serve's metrics count of the job (they count in-process copies as made).
            result["tally"] = tally(
                _from_json(r.result, r.dest_ref) for r in rows if r.done and r.result
            )
            bad = sum(1 for e in entries if e["status"] in _BAD)
            values.update(
                state="failed" if bad else "done",
                finished_at=utc_now(),
                error=f"{bad} of {len(entries)} entries failed" if bad else None,
            )
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(values))
        if "state" in values:  # its ledger is done with (its rows go with it)
            await conn.execute(delete(queued_jobs).where(queued_jobs.c.job_id == job_id))
    if "state" in values:
        log.info("job finished by this worker", job=job_id, state=values["state"])
        return str(values["state"])
    return "running"


async def _admit(
    conn: AsyncConnection,
    app: App,
    parallelism: int,
    entries: list[dict[str, Any]],
    by_entry: dict[int, list[Any]],
) -> None:
    """Defer the copies of the next waiting entries, up to `parallelism` in flight."""
    in_flight = sum(
        1
        for index, mine in by_entry.items()
        if entries[index]["status"] in _OPEN and any(r.deferred for r in mine)
    )
    waiting = sorted(
        index
        for index, mine in by_entry.items()
        if entries[index]["status"] in _OPEN and not any(r.deferred for r in mine)
    )
    admitted = waiting[: max(0, parallelism - in_flight)]
    todo = [r for index in admitted for r in by_entry[index] if not r.done]
    # Deferred before this transaction commits: a crash in between left copies whose
    # records settle the job again (their rows are still open).
    ids = await defer_each(app, [CopyJob.from_args(dict(r.args)) for r in todo])
    for row, queued in zip(todo, ids, strict=True):
        await conn.execute(
            update(job_copies)
            .where(job_copies.c.id == row.id)
            .values(deferred=True, queue_job=queued)
        )
    for index in admitted:
        entries[index]["status"] = "running"
        await conn.execute(
            update(job_copies)
            .where(job_copies.c.id.in_([r.id for r in by_entry[index]]))
            .values(deferred=True)
        )


class JobQueue:
    """The queue as the jobs API of one `serve` uses it (one procrastinate app, opened once)."""

    def __init__(
        self, state: StateDB, *, policy: dict[str, Any] | None = None, poll: float = POLL
    ) -> None:
        """Queue copies on `state`'s queue; `policy` goes with each (see `CopyJob.policy`)."""
        self.state = state
        self.policy = dict(policy or {})
        self.poll = poll
        self._app: App | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> App:
        async with self._opening:
            if self._app is None:
                await ensure_schema(self.state)
                app = make_app(self.state, max_connections=4)
                await app.open_async()
                self._app = app
            return self._app

    async def held(self) -> set[str]:
        """The jobs handed to the queue and still running (the workers finish them)."""
        await self._open()
        stmt = (
            select(queued_jobs.c.job_id)
            .join(jobs, jobs.c.id == queued_jobs.c.job_id)
            .where(jobs.c.state == "running")
        )
        async with self.state.engine.connect() as conn:
            return {str(r) for r in (await conn.execute(stmt)).scalars()}

    async def start(self) -> int:
        """Abort the copies left for jobs no longer running (interrupted); count them.

        A job handed to the queue goes on without `serve` (settled again here, in case
        the `serve` handing it over stopped before deferring its first copies); a job of
        a previous `serve` that was still planning was marked interrupted, and any copy
        still queued for a finished job (a `serve` killed while cancelling) is aborted
        and its rows forgotten.
        """
        app = await self._open()
        finished = select(jobs.c.id).where(jobs.c.state != "running")
        async with self.state.engine.connect() as conn:
            ids = sorted(
                {
                    int(i)
                    for i in (
                        await conn.execute(
                            select(job_copies.c.queue_job).where(
                                job_copies.c.done.is_(False),
                                job_copies.c.queue_job.is_not(None),
                                job_copies.c.job_id.in_(finished),
                            )
                        )
                    ).scalars()
                }
            )
        for job_id in ids:
            await app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        async with self.state.write() as conn:
            await conn.execute(delete(queued_jobs).where(queued_jobs.c.job_id.in_(finished)))
        # A serve stopped between handing a job over and deferring its first copies.
        for held in sorted(await self.held()):
            await settle(self.state, held, app)
        if ids:
            log.info("aborted the copies of finished jobs", copies=len(ids))
        return len(ids)

    async def close(self) -> None:
        """Close the queue's connections."""
        if self._app is not None:
            await self._app.close_async()
            self._app = None

    def copy_job(self, job: CopyJob) -> CopyJob:
        """`job` under this queue's address policy."""
        return CopyJob(**{**asdict(job), "policy": self.policy})

    async def hand_over(
        self,
        job_id: str,
        parallelism: int,
        copies: Mapping[int, Sequence[CopyJob]],
        entries: Sequence[dict[str, Any]],
    ) -> None:
        """Hand a planned job to the workers: its images (by entry), its entries so far."""
        app = await self._open()
        result, progress = job_json(entries)
        async with self.state.write() as conn:
            await conn.execute(insert(queued_jobs).values(job_id=job_id, parallelism=parallelism))
            await conn.execute(
                insert(job_copies),
                [
                    {
                        "job_id": job_id,
                        "entry": index,
                        "dest_ref": c.destination,
                        "args": self.copy_job(c).args(),
                    }
                    for index, mine in sorted(copies.items())
                    for c in mine
                ],
            )
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(state="running", result=result, progress=progress)
            )
        log.info(
            "job handed to the queue",
            job=job_id,
            copies=sum(len(c) for c in copies.values()),
            entries=len(copies),
        )
        await settle(self.state, job_id, app)

    async def wait(self, job_id: str, *, on_look: Any = None) -> JobInfo:
        """Wait until a handed-over job is finished; its row (`on_look` sees each look)."""
        while True:
            try:
                info = await self.state.get_job(job_id)
            except Exception:  # the database may be restarting: look again next time
                log.exception("could not read the job", job=job_id)
                info = None
            if info is not None:
                if on_look is not None:
                    on_look(info)
                if info.state in JOB_FINAL_STATES:
                    return info
            await asyncio.sleep(self.poll)

    async def cancel(self, job_id: str, *, stop_timeout: float = 30.0) -> bool:
        """Cancel a handed-over job and abort its copies; False if it is not running."""
        app = await self._open()
        async with self.state.write() as conn:
            job = (
                await conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update())
            ).first()
            held = await conn.scalar(
                select(queued_jobs.c.job_id).where(queued_jobs.c.job_id == job_id)
            )
            if job is None or held is None or job.state != "running":
                return False
            entries = [dict(e) for e in (job.result or {}).get("entries") or []]
            for entry in entries:
                if entry["status"] in _OPEN:
                    entry.update(status="cancelled", error=CANCELLED_ERROR)
            result, progress = job_json(entries)
            done = await conn.execute(
                select(job_copies).where(job_copies.c.job_id == job_id, job_copies.c.done.is_(True))
            )
            result["tally"] = tally(_from_json(r.result, r.dest_ref) for r in done if r.result)
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state="cancelled",
                    finished_at=utc_now(),
                    error="cancelled",
                    result=result,
                    progress=progress,
                )
            )
            ids = sorted(
                {
                    int(i)
                    for i in (
                        await conn.execute(
                            select(job_copies.c.queue_job).where(
                                job_copies.c.job_id == job_id,
                                job_copies.c.done.is_(False),
                                job_copies.c.queue_job.is_not(None),
                            )
                        )
                    ).scalars()
                }
            )
        await self._abort(app, ids, stop_timeout)
        async with self.state.write() as conn:  # its ledger is done with
            await conn.execute(delete(queued_jobs).where(queued_jobs.c.job_id == job_id))
        return True

    async def _abort(self, app: App, ids: Sequence[int], limit: float) -> None:
        """Abort the copies a job deferred, and wait until no worker runs any of them."""
        for job_id in ids:
            await app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        try:
            async with asyncio.timeout(limit):
                while True:
                    if not await self._running(app, ids):
                        break
                    await asyncio.sleep(self.poll)
        except TimeoutError:
            log.warning("job copies still running after their abort", copies=len(ids))
        log.info("job copies aborted", copies=len(ids))

    @staticmethod
    async def _running(app: App, ids: Sequence[int]) -> bool:
        for job_id in ids:
            for job in await app.job_manager.list_jobs_async(id=job_id):
                if job.status == "doing":
                    return True
        return False
