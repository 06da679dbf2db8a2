"""The jobs of `ocimirror serve`: mirror requests copied in the background, persisted.

A job is one `MirrorRequest`. Its entries run `request.workers` at a time; each copies
`src` to `dst` as the Cloud Run Docker Mirror does (gcrane.Copy: one reference, every
platform, digests unchanged), or with `all_tags` every selected tag of a repository (the
CLI's `copy --all-tags`), or with `platforms` only the matching children of an index. One
entry failing never stops the others: its error is one readable line.

The same copy is never made twice at once. Copies in flight are keyed by (source,
destination, options), normalised; an entry asking for one already in flight, in the same
job or another, awaits that copy's outcome and reports it as its own. A submitted request
whose set of entries equals that of a queued or running job joins that job instead.
Each copy is the engine's (`transfer.engine.plan`, then `execute`): this module adds what
jobs need on top of it (sharing, persistence, cancellation) and renders the results.
Copies to the same destination repository with the same copy options share one `Copier`
while any of them runs, so a blob two of them need is uploaded once (a registry may refuse
a manifest whose blob is being uploaded again at that moment).

Every job is a row of the state database (`StateDB.create_job`): its request, progress
and per-entry results, written when it starts, on each entry's completion and when it
ends. The database's `done` state is the API's `succeeded`. Cancelling a job cancels the
copies only it was waiting for; since a tag is always written last, nothing half-written
is left. Jobs still queued or running when the process stopped are marked `interrupted`
by `start()`, and `close()` interrupts the jobs it stops.

With a `queue` (`execution: workers`), every entry is planned here and the job is then
handed to the queue workers (`workers.jobqueue`), which copy its images, `parallelism`
entries at a time, and finish it: the worker recording its last copy writes its end, as
this module would. A handed-over job survives this process stopping (it is not
interrupted); it is read back from the database. Cancelling it (from any `serve`) aborts
its copies on whichever worker holds them, and returns once none of them runs.

Only queued and running jobs are held in memory: a finished job is read back from the
database (its final write is awaited before it is let go), so memory does not grow with
the jobs served. A job whose final write failed is kept, up to `KEEP_UNSAVED`, so that
what the API answers stays true.

`JobManager` is the state machine over jobs and flights (sharing copies in flight across
jobs, persisting each job's progress, cancelling only what a job alone waited for); what it
works on lives beside it: an entry parsed and its copy's outcome (`entries.py`), a copy in
flight and the Copier flights share (`flights.py`), a job and its views (`jobstate.py`).
"""

from __future__ import annotations

import asyncio
import builtins
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from ..auth.credentials import Keychain
from ..client import HostOptions
from ..errors import OcimirrorError, public_message, scrub
from ..metrics import MirrorMetrics, tally
from ..netpolicy import AddressPolicy
from ..reference import Reference
from ..settings.config import Config
from ..settings.connection import bucket_settings, host_options, keychain_for
from ..state.db import StateDB
from ..state.jobs import JobInfo
from ..state.schema import INTERRUPTED_ERROR
from ..stores.pool import StorePool
from ..transfer import engine
from ..transfer.copy import Copier, CopyOptions, ImageResult
from ..transfer.engine import Side, Stores
from ..workers.jobqueue import JobQueue
from .entries import (
    FlightKey,
    Outcome,
    Plan,
    apply_outcome,
    copy_options_of,
    plan_entry,
    selection_of,
)
from .flights import Credit, Flight, Router, SharedCopier
from .jobstate import (
    BAD_STATES,
    CANCELLED_ERROR,
    Job,
    StopState,
    stored_view,
    to_db,
)
from .models import EntryError, JobState, JobView, MirrorRequest, MirrorResponse
from .queued import plan_all, refresh

log = structlog.get_logger(__name__)

#: The `mirror` label of the jobs' metrics (parentheses keep it apart from mirror names).
METRICS_LABEL = "(jobs)"
#: Finished jobs whose final write failed, kept in memory to answer with (the oldest go).
KEEP_UNSAVED = 64
#: Seconds `cancel()` and `close()` wait for cancelled copies to stop.
STOP_TIMEOUT = 30.0


def _now() -> datetime:
    return datetime.now(UTC)


class JobManager:
    """Runs mirror requests as background jobs, persisted in the state database."""

    def __init__(
        self,
        state: StateDB,
        *,
        pool: StorePool | None = None,
        keychain: Keychain | None = None,
        image_concurrency: int = 16,
        metrics: MirrorMetrics | None = None,
        config: Config | None = None,
        policy: AddressPolicy | None = None,
        queue: JobQueue | None = None,
    ) -> None:
        """Use `state` for jobs and `pool` for registries.

        With `queue`, image copies are made by queue workers (`execution: workers`);
        this process plans them and closes the queue with `close()`.

        Without a pool one is made (and closed by `close()`) on `keychain`, else on the
        credentials of `config`. `config` also gives each registry host its connection
        settings (TLS, plain HTTP, request limits), as in scheduled sync. `policy` says
        which registry addresses entries may reach (refused at once when it can tell from
        the reference, else at connection time); None reaches any (a trusted caller).
        """
        self.state = state
        self.config = config
        self.policy = policy
        self._own_pool = pool is None
        if pool is None:
            if keychain is None and config is not None:
                keychain = keychain_for(config)
            settings = bucket_settings(config) if config is not None else None
            pool = StorePool(keychain=keychain, settings=settings)
        self.pool = pool
        side = Side(options_for=self._host_options)
        self._stores = Stores(pool, source=side, destination=side)
        self.image_concurrency = image_concurrency
        self.metrics = metrics
        self.queue = queue
        self._jobs: dict[str, Job] = {}  # queued or running
        self._unsaved: OrderedDict[str, JobView] = OrderedDict()
        self._flights: dict[FlightKey, Flight] = {}
        self._copiers: dict[tuple[str, str, CopyOptions], SharedCopier] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._submit_lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> int:
        """Mark jobs a previous process left queued or running as interrupted; count them.

        With a queue, the jobs handed to the workers go on (they finish them), and copies
        left on the queue for jobs no longer running are aborted.
        """
        held: set[str] = set()
        if self.queue is not None:  # handed to the workers: they finish them
            held = await self.queue.held()
        stale = await self.state.interrupt_jobs(keep=[*self._jobs, *held])
        if stale:
            log.info("interrupted jobs of a previous process", jobs=stale)
        if self.queue is not None:  # and their copies still on the queue
            await self.queue.start()
        return stale

    async def close(self) -> None:
        """Stop every job still queued or running (marked interrupted) and close the pool."""
        self._closed = True
        await asyncio.gather(*(self._stop(job, "interrupted") for job in list(self._jobs.values())))
        leftovers = [f.task for f in self._flights.values() if f.task and not f.task.done()]
        for task in leftovers:
            task.cancel()
        pending = [*leftovers, *self._background]
        if pending:
            await asyncio.wait(pending, timeout=STOP_TIMEOUT)
        for shared in self._copiers.values():
            shared.copier.cancel()
        if self.queue is not None:
            await self.queue.close()
        if self._own_pool:
            await self.pool.close()

    # -- jobs -----------------------------------------------------------------------------

    async def submit(self, request: MirrorRequest) -> tuple[JobView, bool]:
        """Start a job for `request` and return it at once, or join an identical one (True)."""
        job, joined, _ = await self._submit(request)
        return job.view(), joined

    async def wait(self, job_id: str) -> JobView:
        """Wait for a job to finish and return it; KeyError if there is no such job."""
        job = self._jobs.get(job_id)
        if job is not None:
            await job.done.wait()
        view = await self.get(job_id)
        if view is None:
            raise KeyError(job_id)
        return view

    def view(self, job_id: str) -> JobView | None:
        """Return a job of this process still queued or running (else None)."""
        job = self._jobs.get(job_id)
        return job.view() if job is not None else self._unsaved.get(job_id)

    def held(self) -> int:
        """Count the jobs held in memory (queued, running, or finished but not written)."""
        return len(self._jobs) + len(self._unsaved)

    async def get(self, job_id: str) -> JobView | None:
        """Return a job, live or from the state database; None if there is none."""
        live = self.view(job_id)
        if live is not None:
            return live
        info = await self.state.get_job(job_id)
        return None if info is None else stored_view(info)

    async def list(self, limit: int = 50) -> list[JobView]:
        """Return the latest jobs, newest first (live ones with live progress)."""
        views = []
        for info in await self.state.list_jobs(limit):
            live = self.view(info.id)
            views.append(live if live is not None else stored_view(info))
        return views

    def running(self) -> builtins.list[JobView]:
        """Return the jobs of this process still queued or running."""
        return [job.view() for job in self._jobs.values() if not job.finished]

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job and wait until it stopped; False if it is not."""
        job = self._jobs.get(job_id)
        if job is None and self.queue is not None:  # perhaps handed over by another serve
            return await self.queue.cancel(job_id, stop_timeout=STOP_TIMEOUT)
        if job is None or job.finished or job.stop_as is not None:
            return False
        await self._stop(job, "cancelled")
        return True

    async def run_sync(self, request: MirrorRequest) -> MirrorResponse:
        """Copy a request (or join an identical job) and answer as the Cloud Run mirror."""
        job, _, plans = await self._submit(request)
        await job.done.wait()
        # A joined job may list the same entries in another order: match them by key.
        outcome = {plan.key: job.entries[i] for i, plan in enumerate(job.plans)}
        errors = []
        for i, (entry, plan) in enumerate(zip(request.mirrors, plans, strict=True)):
            result = outcome.get(plan.key)
            if result is None or result.status not in ("copied", "unchanged"):
                error = (result.error or result.status) if result is not None else "not run"
                errors.append(EntryError(index=i, name=entry.name, error=error))
        return MirrorResponse(ok=not errors, errors=errors or None)

    # -- running a job --------------------------------------------------------------------

    async def _submit(self, request: MirrorRequest) -> tuple[Job, bool, builtins.list[Plan]]:
        if self._closed:
            raise RuntimeError("the job manager is closed")
        plans = [plan_entry(entry, request, self.policy) for entry in request.mirrors]
        keys = frozenset(p.key for p in plans)
        async with self._submit_lock:
            for job in self._jobs.values():
                if not job.finished and job.stop_as is None and job.keys == keys:
                    log.info("request joined a job", job=job.id)
                    return job, True, plans
            if self._closed:
                raise RuntimeError("the job manager is closed")
            request_json = request.model_dump(mode="json", exclude_none=True)
            job_id = await self.state.create_job(request_json)
            info = await self.state.get_job(job_id)
            created = info.created_at if info is not None else _now()
            job = Job(job_id, request, request_json, plans, created)
            self._jobs[job_id] = job
            job.task = asyncio.create_task(self._run(job), name=f"ocimirror job {job_id}")
        log.info("job submitted", job=job_id, entries=len(plans))
        return job, False, plans

    async def _run(self, job: Job) -> None:
        """Run a job's entries, `workers` at a time, and record how it ended."""
        if self.queue is not None:
            await self._run_queued(job, self.queue)
            return
        try:
            job.state = "running"
            job.started_at = _now()
            await self._save(job)
            workers = asyncio.Semaphore(job.request.workers)
            async with asyncio.TaskGroup() as group:
                for index, plan in enumerate(job.plans):
                    group.create_task(self._entry(job, index, plan, workers))
        except asyncio.CancelledError:
            how: StopState = job.stop_as or "interrupted"
            job.settle(how)
            if job.orphans:
                await asyncio.wait(job.orphans, timeout=STOP_TIMEOUT)
            await self._finish(job, how)
            if job.stop_as is None:  # not cancelled by us (the loop is going away)
                raise
            return
        await self._finish(
            job, "failed" if any(e.status in BAD_STATES for e in job.entries) else "succeeded"
        )

    async def _entry(self, job: Job, index: int, plan: Plan, workers: asyncio.Semaphore) -> None:
        """Run one entry of a job and record its outcome."""
        result = job.entries[index]
        try:
            if plan.error is not None:
                outcome = Outcome.failed(plan.error)
            else:
                async with workers:
                    result.status = "running"
                    outcome = await self._await_flight(job, index, plan)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: the entry fails, the job goes on
            log.exception("job entry crashed", job=job.id, entry=index)
            outcome = Outcome.failed(public_message(e))
        apply_outcome(result, outcome)
        await self._save(job)

    async def _await_flight(self, job: Job, index: int, plan: Plan) -> Outcome:
        """Await the copy of `plan`: the one in flight, else a new one."""
        flight = self._flights.get(plan.key)
        if flight is None:
            flight = Flight(plan)
            name = f"ocimirror copy {plan.key[0]} to {plan.key[1]}"
            flight.task = asyncio.create_task(self._fly(flight), name=name)
            self._flights[plan.key] = flight
            flight.task.add_done_callback(self._landed(plan.key, flight))
        task = flight.task
        assert task is not None
        flight.waiters += 1
        job.flights[index] = flight
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                return Outcome("cancelled", error=CANCELLED_ERROR)  # stopped by another
            if task.done() and not task.cancelled() and task.exception() is None:
                apply_outcome(job.entries[index], task.result())  # it finished as we were stopped
            raise
        finally:
            flight.waiters -= 1
            job.flights.pop(index, None)
            if flight.waiters == 0 and not task.done():
                task.cancel()  # nobody else wants it
                job.orphans.add(task)
                if self._flights.get(plan.key) is flight:
                    del self._flights[plan.key]  # a new ask copies anew, not "cancelled"

    def _landed(self, key: FlightKey, flight: Flight) -> Callable[[asyncio.Task[Outcome]], None]:
        """Return a done callback forgetting `flight` (so the next ask copies anew)."""

        def forget(_task: asyncio.Task[Outcome]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]

        return forget

    async def _save(self, job: Job) -> bool:
        """Write the job's state, progress and entries; never cancelled half-way.

        Writes are ordered, and coalesced: a change made while an earlier write waits its
        turn is written by that one (it takes its snapshot when its turn comes). Tell
        whether the write succeeded.
        """
        task = job.pending_write
        if task is None:
            task = job.pending_write = asyncio.create_task(self._persist(job))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            await asyncio.shield(task)
        except Exception:  # logged by _persist
            return False
        return True

    async def _persist(self, job: Job) -> None:
        async with job.lock:
            if job.pending_write is asyncio.current_task():
                job.pending_write = None  # changes from now on need another write
            view = job.view()
            try:
                await self.state.update_job(
                    job.id,
                    state=to_db(view.state),
                    progress=view.progress.model_dump(mode="json"),
                    result={
                        "entries": [e.model_dump(mode="json") for e in view.entries],
                        "errors": [e.model_dump(mode="json") for e in view.errors],
                    },
                    error=job.error,
                )
            except Exception:
                log.exception("could not record the job", job=job.id)
                raise

    async def _finish(self, job: Job, state: JobState) -> None:
        """Record a job's final state and let its waiters go."""
        job.state = state
        job.finished_at = _now()
        bad = sum(1 for e in job.entries if e.status in BAD_STATES)
        if state == "failed":
            job.error = f"{bad} of {len(job.entries)} entries failed"
        elif state == "cancelled":
            job.error = "cancelled"
        elif state == "interrupted":
            job.error = INTERRUPTED_ERROR
        saved = False
        try:
            saved = await self._save(job)
        finally:
            # Written: the database answers for it from now on. Not written: keep its view.
            self._jobs.pop(job.id, None)
            if not saved:
                self._unsaved[job.id] = job.view()
                while len(self._unsaved) > KEEP_UNSAVED:
                    self._unsaved.popitem(last=False)
            job.done.set()
            log.info("job finished", job=job.id, state=state, error=job.error)

    async def _stop(self, job: Job, how: StopState) -> None:
        """Cancel a job (its first stopper decides how it ends) and wait until it stopped."""
        first = job.stop_as is None
        if first:
            job.stop_as = how
        task = job.task
        if task is not None and not task.done():
            if first:
                task.cancel()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if not job.finished and not job.handed:  # cancelled before it ever ran
            job.settle(job.stop_as or how)
            await self._finish(job, job.stop_as or how)

    # -- copying --------------------------------------------------------------------------

    async def _fly(self, flight: Flight) -> Outcome:
        """Make one copy: an image, or the selected tags of a repository (the engine's)."""
        plan = flight.plan
        src, dst, options = plan.src, plan.dst, plan.options
        assert src is not None
        assert dst is not None
        copy_options = copy_options_of(options)
        key = (dst.registry, dst.repository, copy_options)
        shared = self._copiers.get(key)
        if shared is None:
            router = Router()
            copier = Copier(
                options=copy_options, image_concurrency=self.image_concurrency, progress=router
            )
            shared = self._copiers[key] = SharedCopier(copier, router)
        shared.users += 1
        try:
            planned = await engine.plan(
                [(src, dst)], stores=self._stores, selection=selection_of(options)
            )
            if planned.failed:
                failed = planned.failed[0]
                log.warning(
                    "copy failed", source=str(src), destination=str(dst), error=failed.error
                )
                self._count_failure()
                return Outcome.failed(failed.public_error or scrub(failed.error))
            # The first copy to a repository lists it; later ones share what it learnt.
            every = options.all_tags and shared.users == 1
            results = await engine.execute(
                planned.tasks,
                stores=self._stores,
                copier=shared.copier,
                listing="all" if every else "none",
                watcher=Credit(shared.router, flight),
                shared=True,
            )
            for r in results:
                if r.status == "failed":  # the detail stays here; the API shows `_public`
                    log.warning(
                        "image copy failed",
                        source=r.source,
                        destination=r.destination,
                        error=r.error,
                    )
            outcome = Outcome.of(results)
            self._count(results)
            return outcome
        except OcimirrorError as e:
            log.warning("copy failed", source=str(src), destination=str(dst), error=str(e))
            self._count_failure()
            return Outcome.failed(public_message(e))
        except Exception as e:  # a bug: this copy fails, nothing else
            log.exception("copy crashed", source=str(src), destination=str(dst))
            self._count_failure()
            return Outcome.failed(public_message(e))
        finally:
            shared.users -= 1
            if shared.users == 0:
                shared.copier.cancel()  # stop transfers a cancelled copy left behind
                if self._copiers.get(key) is shared:
                    del self._copiers[key]

    # -- on the queue (execution: workers) ---------------------------------------------

    async def _run_queued(self, job: Job, queue: JobQueue) -> None:
        """Plan every entry here, hand the job to the workers, and await their finishing it.

        Once handed over the job is the workers': a `serve` stopping lets it go on (it is
        not interrupted), and a cancel marks it cancelled and aborts its copies.
        """
        hand: asyncio.Task[None] | None = None
        try:
            job.state = "running"
            job.started_at = _now()
            await self._save(job)
            copies = await plan_all(job, self._stores)
            for entry in job.entries:
                if entry.status == "failed":
                    self._count_failure()
            if not copies:  # nothing to copy: decided here
                bad = any(e.status in BAD_STATES for e in job.entries)
                await self._finish(job, "failed" if bad else "succeeded")
                return
            entries = [e.model_dump(mode="json") for e in job.view().entries]
            async with job.lock:  # after any write of ours still going
                hand = asyncio.create_task(
                    queue.hand_over(job.id, job.request.workers, copies, entries)
                )
                job.handed = True
                await asyncio.shield(hand)
            info = await queue.wait(job.id, on_look=lambda i: refresh(job, i))
            refresh(job, info)
            self._count_tally(info)
            self._release(job)
        except asyncio.CancelledError:
            if not job.handed:  # still planning: as in-process
                how: StopState = job.stop_as or "interrupted"
                job.settle(how)
                await self._finish(job, how)
            else:
                if hand is not None:
                    await asyncio.wait({hand})
                if job.stop_as == "cancelled":
                    await queue.cancel(job.id, stop_timeout=STOP_TIMEOUT)
                    info_ = await self.state.get_job(job.id)
                    if info_ is not None:
                        refresh(job, info_)
                        self._count_tally(info_)
                self._release(job)  # interrupted: the workers finish it
            if job.stop_as is None:
                raise
        except Exception as e:  # the hand-over failed: the job fails here
            log.exception("could not hand the job to the queue", job=job.id)
            job.handed = False
            for entry in job.entries:
                if entry.status in ("pending", "running"):
                    apply_outcome(entry, Outcome.failed(public_message(e)))
            await self._finish(job, "failed")

    def _release(self, job: Job) -> None:
        """Let a handed-over job go: the database answers for it from now on."""
        self._jobs.pop(job.id, None)
        job.done.set()
        log.info("job let go", job=job.id, state=job.state)

    def _host_options(self, ref: Reference) -> HostOptions | None:
        """The config's settings for a registry host, under the address policy."""
        options = host_options(self.config, ref.api_host) if self.config is not None else None
        if self.policy is not None:
            options = replace(options or HostOptions(), address_policy=self.policy)
        return options

    def _count(self, results: Iterable[ImageResult]) -> None:
        """Record image results in the metrics, if any."""
        if self.metrics is not None:
            self.metrics.count(METRICS_LABEL, tally(results))

    def _count_tally(self, info: JobInfo) -> None:
        """Record what the workers copied of a handed-over job that ended (the `tally` the
        worker that ended it kept in its row), as `_count` records in-process copies."""
        counted = (info.result or {}).get("tally")
        if self.metrics is not None and isinstance(counted, dict):
            self.metrics.count(METRICS_LABEL, counted)

    def _count_failure(self) -> None:
        if self.metrics is not None:
            self.metrics.tasks.labels(METRICS_LABEL, "failed").inc()


__all__ = ["JobManager"]
