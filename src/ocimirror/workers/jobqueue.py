"""The jobs API's copies on the queue: defer them, await what workers record, abort them.

With `execution: workers` a job of `serve`'s jobs API plans each entry in `serve` (the
engine's `plan`: which images, which tags) and hands the image copies to the queue, one
procrastinate job each, as a sync pass does (same task, same locks on the destination,
so a copy already queued for a destination is joined). Each copy awaited is a row of
`ocimirror_job_copies`, written before its job is deferred; the worker that records a
destination (`record`) marks every row awaiting it done with the image's result, which
`serve` reads back and renders as an in-process job's entry.

Cancelling a job aborts the copies it deferred itself (`cancel_job_by_id(abort=True)`):
procrastinate cancels those still queued and asks the worker holding a running one to
cancel it (its listener hears the request at once). `copy` then waits until none of them
runs any more, so when a cancel returns no copy of the job starts a new upload. A copy
the job joined (deferred by a sync pass or another job) is not aborted: it is not only
this job's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import delete, insert, select, update

from ..state.db import StateDB
from ..transfer.copy import CopyOptions, ImageResult
from ..transfer.plan import CopyTask
from .queue import CopyJob, defer_each, make_app
from .schema import ensure_schema, job_copies

if TYPE_CHECKING:
    from procrastinate import App

log = structlog.get_logger(__name__)

#: Seconds between looks at the jobs' copies while awaiting the workers (one query for all).
POLL = 0.2
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


def _from_json(data: dict[str, Any]) -> ImageResult:
    return ImageResult(**{k: data[k] for k in _FIELDS if k in data})


async def record(state: StateDB, destination: str, result: ImageResult) -> int:
    """Answer every job copy awaiting `destination` with `result` (a worker's); count them."""
    async with state.write() as conn:
        done = await conn.execute(
            update(job_copies)
            .where(job_copies.c.dest_ref == destination, job_copies.c.done.is_(False))
            .values(done=True, result=_to_json(result))
        )
    return int(done.rowcount or 0)


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
        self._waiting: dict[str, asyncio.Future[list[ImageResult]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def _open(self) -> App:
        async with self._opening:
            if self._app is None:
                await ensure_schema(self.state)
                app = make_app(self.state, max_connections=4)
                await app.open_async()
                self._app = app
            return self._app

    async def start(self) -> int:
        """Abort the copies a previous `serve` left for its jobs (now interrupted); count.

        As the jobs service assumes one `serve` per state database, no row of
        `ocimirror_job_copies` is awaited when it starts: the copies still queued or
        running for them are aborted (a cancelled job's copies do not run on for nobody)
        and the rows forgotten.
        """
        app = await self._open()
        async with self.state.engine.connect() as conn:
            ids = sorted(
                {
                    int(i)
                    for i in (
                        await conn.execute(
                            select(job_copies.c.queue_job).where(
                                job_copies.c.done.is_(False), job_copies.c.queue_job.is_not(None)
                            )
                        )
                    ).scalars()
                }
            )
        for job_id in ids:
            await app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        async with self.state.write() as conn:
            await conn.execute(delete(job_copies))
        if ids:
            log.info("aborted the copies of a previous process's jobs", copies=len(ids))
        return len(ids)

    async def close(self) -> None:
        """Close the queue's connections."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._app is not None:
            await self._app.close_async()
            self._app = None

    async def copy(
        self, tasks: Sequence[CopyTask], options: CopyOptions, *, stop_timeout: float = 30.0
    ) -> list[ImageResult]:
        """Have workers copy `tasks`; their results, in order. Cancelled: abort the copies."""
        if not tasks:
            return []
        app = await self._open()
        flight = uuid.uuid4().hex
        jobs = [
            CopyJob(**{**asdict(CopyJob.of(task, options)), "policy": self.policy})
            for task in tasks
        ]
        async with self.state.write() as conn:
            await conn.execute(
                insert(job_copies), [{"flight": flight, "dest_ref": j.destination} for j in jobs]
            )
        try:
            ids = await defer_each(app, jobs)
            mine = [i for i in ids if i is not None]
            async with self.state.write() as conn:
                for job, queued in zip(jobs, ids, strict=True):
                    if queued is not None:
                        await conn.execute(
                            update(job_copies)
                            .where(
                                job_copies.c.flight == flight,
                                job_copies.c.dest_ref == job.destination,
                            )
                            .values(queue_job=queued)
                        )
            log.info("job copies queued", copies=len(jobs), joined=len(jobs) - len(mine))
            try:
                results = await self._await(flight)
            except asyncio.CancelledError:
                await asyncio.shield(self._abort(app, mine, stop_timeout))
                raise
            by_destination = {r.destination: r for r in results}
            return [by_destination[j.destination] for j in jobs]
        finally:
            await asyncio.shield(self._forget(flight))

    async def _await(self, flight: str) -> list[ImageResult]:
        """Wait until every copy of `flight` is recorded (one poller looks for all flights)."""
        waiter: asyncio.Future[list[ImageResult]] = asyncio.get_running_loop().create_future()
        self._waiting[flight] = waiter
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="ocimirror job copies")
        try:
            return await waiter
        finally:
            self._waiting.pop(flight, None)

    async def _poll(self) -> None:
        """Look at every awaited flight in one query per `poll`; answer those finished."""
        while self._waiting:
            try:
                await self._look()
            except Exception:  # the database may be restarting: look again next time
                log.exception("could not read the job copies")
            await asyncio.sleep(self.poll)

    async def _look(self) -> None:
        flights = list(self._waiting)
        stmt = select(
            job_copies.c.flight, job_copies.c.dest_ref, job_copies.c.done, job_copies.c.result
        ).where(job_copies.c.flight.in_(flights))
        async with self.state.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        by_flight: dict[str, list[Any]] = {}
        for r in rows:
            by_flight.setdefault(r.flight, []).append(r)
        for flight, mine in by_flight.items():
            waiter = self._waiting.get(flight)
            if waiter is None or waiter.done() or not all(r.done for r in mine):
                continue
            out = []
            for r in mine:
                result = _from_json(dict(r.result))
                # A joined copy recorded under its own destination spelling: ours.
                out.append(ImageResult(**{**asdict(result), "destination": r.dest_ref}))
            waiter.set_result(out)

    async def _abort(self, app: App, ids: Sequence[int], limit: float) -> None:
        """Abort the copies this job deferred, and wait until no worker runs any of them."""
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

    async def _forget(self, flight: str) -> None:
        async with self.state.write() as conn:
            await conn.execute(delete(job_copies).where(job_copies.c.flight == flight))
