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

With a `queue` (`execution: workers`), each copy is planned here and its images are
copied by queue workers (`workers.jobqueue`); cancelling aborts them on whichever worker
holds them, and the cancel returns once none of them runs.

Only queued and running jobs are held in memory: a finished job is read back from the
database (its final write is awaited before it is let go), so memory does not grow with
the jobs served. A job whose final write failed is kept, up to `KEEP_UNSAVED`, so that
what the API answers stays true.

Why it is long: sharing copies in flight across jobs, persisting each job's progress and
cancelling only what a job alone waited for are one state machine over the same
`_Job`/`_Flight` objects; taken apart, each piece would need the others' internals.
"""

from __future__ import annotations

import asyncio
import builtins
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from ..auth.credentials import Keychain
from ..client import HostOptions
from ..errors import ConfigError, OcimirrorError, public_message, scrub
from ..metrics import MirrorMetrics
from ..netpolicy import AddressPolicy
from ..reference import Reference
from ..settings.config import Config
from ..settings.connection import bucket_settings, host_options, keychain_for
from ..state.db import StateDB
from ..state.jobs import JobInfo
from ..state.schema import INTERRUPTED_ERROR
from ..state.schema import JobState as StoredState
from ..stores.pool import StorePool
from ..stores.schemes import scheme_for
from ..transfer import engine
from ..transfer.copy import Copier, CopyOptions, ImageResult
from ..transfer.engine import Side, Stores
from ..transfer.options import Selection, parse_platforms, tag_filter
from ..transfer.plan import CopyTask, destination_for
from ..transfer.referrers import ReferrerOptions
from ..workers.jobqueue import JobQueue
from .models import (
    EntryError,
    EntryResult,
    JobState,
    JobView,
    MirrorEntry,
    MirrorRequest,
    MirrorResponse,
    Progress,
    ResolvedOptions,
)

log = structlog.get_logger(__name__)

StopState = Literal["cancelled", "interrupted"]
#: What identifies one copy: normalised source, normalised destination, options.
FlightKey = tuple[str, str, ResolvedOptions]

#: The `mirror` label of the jobs' metrics (parentheses keep it apart from mirror names).
METRICS_LABEL = "(jobs)"
#: The error of an entry whose job was cancelled before it finished.
CANCELLED_ERROR = "cancelled before the copy finished"
#: Finished jobs whose final write failed, kept in memory to answer with (the oldest go).
KEEP_UNSAVED = 64
#: Seconds `cancel()` and `close()` wait for cancelled copies to stop.
STOP_TIMEOUT = 30.0

FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
_OPEN: frozenset[str] = frozenset({"pending", "running"})
_BAD: frozenset[str] = frozenset({"failed", "cancelled"})
_API_STATES: dict[str, JobState] = {
    "queued": "queued",
    "running": "running",
    "done": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "interrupted",
}


def _now() -> datetime:
    return datetime.now(UTC)


def one_line(text: str) -> str:
    """Collapse an error message to one line of single spaces."""
    return " ".join(text.split()) or "unknown error"


def _to_db(state: JobState) -> StoredState:
    """Map an API job state to the state database's (`succeeded` is stored as `done`)."""
    return "done" if state == "succeeded" else state


def _from_db(state: str) -> JobState:
    """Map a stored job state to the API's (`done` reads as `succeeded`)."""
    return _API_STATES.get(state, "failed")


# -- entries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """One entry, parsed: what to copy and with which options, or why it cannot be."""

    key: FlightKey
    options: ResolvedOptions
    src: Reference | None = None
    dst: Reference | None = None
    error: str | None = None


def _selection(options: ResolvedOptions) -> Selection:
    """What an entry selects; filters without `all_tags`, or a bad filter, are an error."""
    return Selection(
        all_tags=options.all_tags,
        tags=tag_filter(
            all_tags=options.all_tags,
            include=options.include,
            exclude=options.exclude,
            semver=options.semver,
            latest=options.latest,
        ),
    )


def _referrers(options: ResolvedOptions) -> ReferrerOptions:
    """The referrer options of an entry (ConfigError when they contradict each other)."""
    return ReferrerOptions(
        enabled=options.referrers,
        include=options.referrers_include,
        exclude=options.referrers_exclude,
        require_signed=options.require_signed,
    )


def _plan(entry: MirrorEntry, request: MirrorRequest, policy: AddressPolicy | None) -> _Plan:
    """Parse an entry; a bad reference or option, or a refused registry, is its error."""
    options = entry.resolved(request)
    try:
        src, dst = Reference.parse(entry.src), Reference.parse(entry.dst)
        for ref in (src, dst):
            if not scheme_for(ref).registry_host:
                raise ConfigError(f"{ref}: only registry references are accepted here")
            refused = policy.refusal(ref.api_host) if policy is not None else None
            if refused is not None:
                raise refused
        if not options.all_tags:
            dst = destination_for(src, dst)
        _selection(options)
        _referrers(options)
        parse_platforms(options.platforms)
    except (OcimirrorError, ValueError) as e:
        # Keyed apart from every valid entry: the raw text cannot parse.
        return _Plan(("!" + entry.src, entry.dst, options), options, error=one_line(str(e)))
    return _Plan((str(src), str(dst), options), options, src, dst)


@dataclass(frozen=True)
class _Outcome:
    """What one copy did: the part of an EntryResult shared by every entry awaiting it."""

    status: Literal["copied", "unchanged", "failed", "cancelled"]
    images: int = 0
    copied: int = 0
    bytes: int = 0
    error: str | None = None
    digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str) -> _Outcome:
        """An outcome with nothing copied and this error."""
        return cls("failed", error=one_line(error))

    @classmethod
    def of(cls, results: list[ImageResult]) -> _Outcome:
        """Summarise the image results of one entry."""
        failed = [r for r in results if r.status == "failed"]
        error = None
        if len(results) == 1 and failed:
            error = _public(failed[0])
        elif failed:
            shown = "; ".join(f"{r.destination}: {_public(r)}" for r in failed[:3])
            more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
            error = f"{len(failed)} of {len(results)} images failed: {shown}{more}"
        skipped = [r for r in results if r.status == "skipped"]
        if skipped and error is None:  # require_signed: reported, not failed
            names = ", ".join(r.destination for r in skipped[:3])
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            error = f"{len(skipped)} of {len(results)} images skipped (unsigned): {names}{more}"
        copied = sum(1 for r in results if r.status == "copied")
        status: Literal["copied", "unchanged", "failed"] = (
            "failed" if failed else "copied" if copied else "unchanged"
        )
        return cls(
            status,
            images=len(results),
            copied=copied,
            bytes=sum(r.bytes_copied for r in results),
            error=error,
            digests={
                r.destination: r.destination_digest
                for r in results
                if r.status not in ("failed", "skipped")
            },
        )


def _public(result: ImageResult) -> str:
    """A failed image's error as the API shows it (the detail is in the server log)."""
    return one_line(result.public_error or scrub(result.error))


class _Router:
    """The progress of a shared Copier, credited to the flight copying each destination."""

    def __init__(self) -> None:
        self.flights: dict[str, _Flight] = {}

    def image_started(self, source: str, destination: str) -> None:
        """Nothing to do: the entry is already running."""

    def image_sized(self, destination: str, total: int) -> None:
        """Nothing to do: progress counts entries and bytes."""

    def bytes_moved(self, destination: str, n: int) -> None:
        """Add blob bytes to the flight copying `destination`."""
        flight = self.flights.get(destination)
        if flight is not None:
            flight.bytes += n

    def image_finished(self, result: ImageResult) -> None:
        """Nothing to do: the flight summarises its results itself."""


@dataclass
class _SharedCopier:
    """A Copier shared by the flights to one destination repository while any runs."""

    copier: Copier
    router: _Router
    users: int = 0


class _Credit:
    """Credits the bytes of each image a flight copies to that flight (an engine Watcher)."""

    def __init__(self, router: _Router, flight: _Flight) -> None:
        self.router = router
        self.flight = flight

    def started(self, task: CopyTask) -> None:
        """Route the destination's bytes to the flight (unless another flight has it)."""
        self.router.flights.setdefault(str(task.destination), self.flight)

    def finished(self, task: CopyTask, result: ImageResult | None) -> None:
        """Stop routing the destination's bytes to the flight."""
        destination = str(task.destination)
        if self.router.flights.get(destination) is self.flight:
            del self.router.flights[destination]


class _Flight:
    """One copy in progress, shared by every entry asking for the same one."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.waiters = 0
        self.bytes = 0
        self.task: asyncio.Task[_Outcome] | None = None


# -- jobs -------------------------------------------------------------------------------


class _Job:
    """A job of this process: its request, entries and live progress."""

    def __init__(
        self,
        job_id: str,
        request: MirrorRequest,
        request_json: dict[str, Any],
        plans: list[_Plan],
        created_at: datetime,
    ) -> None:
        self.id = job_id
        self.request = request
        self.request_json = request_json
        self.plans = plans
        self.keys = frozenset(p.key for p in plans)
        self.state: JobState = "queued"
        self.created_at = created_at
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.error: str | None = None
        self.entries = [
            EntryResult(index=i, name=e.name, status="pending")
            for i, e in enumerate(request.mirrors)
        ]
        self.flights: dict[int, _Flight] = {}  # entry index → the copy it awaits
        self.orphans: set[asyncio.Task[_Outcome]] = set()  # copies it cancelled
        self.task: asyncio.Task[None] | None = None
        self.stop_as: StopState | None = None
        self.done = asyncio.Event()
        self.lock = asyncio.Lock()  # orders the job's database writes
        self.pending_write: asyncio.Task[None] | None = None  # one not yet begun

    @property
    def finished(self) -> bool:
        """Tell whether the job reached a final state."""
        return self.state in FINAL_STATES

    def view(self) -> JobView:
        """A snapshot of the job, with live bytes for the entries still copying."""
        entries = []
        for entry in self.entries:
            shown = entry.model_copy(deep=True)
            flight = self.flights.get(entry.index)
            if flight is not None and entry.status == "running":
                shown.bytes = max(flight.bytes, 0)
            entries.append(shown)
        return _view(
            self.id,
            self.state,
            self.created_at,
            self.started_at,
            self.finished_at,
            entries,
            self.request_json,
        )

    def settle(self, how: StopState) -> None:
        """Mark every entry not finished as cancelled (the job stopped)."""
        error = CANCELLED_ERROR if how == "cancelled" else INTERRUPTED_ERROR
        for entry in self.entries:
            if entry.status in _OPEN:
                entry.status = "cancelled"
                entry.error = error


def _apply(result: EntryResult, outcome: _Outcome) -> None:
    """Record a copy's outcome as an entry's result."""
    result.status = outcome.status
    result.images = outcome.images
    result.copied = outcome.copied
    result.bytes = outcome.bytes
    result.error = outcome.error
    result.digests = dict(outcome.digests)


def _errors(entries: Iterable[EntryResult]) -> list[EntryError]:
    """The failed (or cancelled) entries as Cloud Run mirror errors, by index."""
    return sorted(
        (
            EntryError(index=e.index, name=e.name, error=e.error or e.status)
            for e in entries
            if e.status in _BAD
        ),
        key=lambda e: e.index,
    )


def _view(
    job_id: str,
    state: JobState,
    created_at: datetime,
    started_at: datetime | None,
    finished_at: datetime | None,
    entries: list[EntryResult],
    request: dict[str, Any],
) -> JobView:
    """Build a JobView, with the progress and errors its entries imply."""
    progress = Progress(
        done=sum(1 for e in entries if e.status not in _OPEN),
        total=len(entries),
        bytes=sum(e.bytes for e in entries),
    )
    return JobView(
        id=job_id,
        state=state,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        progress=progress,
        entries=entries,
        errors=_errors(entries),
        request=request,
    )


def _stored_view(info: JobInfo) -> JobView:
    """A JobView of a job read from the state database."""
    state = _from_db(info.state)
    result = info.result or {}
    entries: list[EntryResult] = []
    try:
        entries = [EntryResult.model_validate(e) for e in result.get("entries") or []]
    except (ValidationError, TypeError, AttributeError):
        entries = []
    if not entries:  # never started: every entry pending
        mirrors = info.request.get("mirrors") if isinstance(info.request, dict) else None
        for i, m in enumerate(mirrors if isinstance(mirrors, list) else []):
            src = m.get("src", "?") if isinstance(m, dict) else "?"
            dst = m.get("dst", "?") if isinstance(m, dict) else "?"
            entries.append(EntryResult(index=i, name=f"({src} to {dst})", status="pending"))
    if state in FINAL_STATES:
        # Written while running, then stopped by a process that died: not finished.
        for entry in entries:
            if entry.status in _OPEN:
                entry.status = "cancelled"
                entry.error = info.error or INTERRUPTED_ERROR
    return _view(
        info.id, state, info.created_at, info.started_at, info.finished_at, entries, info.request
    )


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
        self._jobs: dict[str, _Job] = {}  # queued or running
        self._unsaved: OrderedDict[str, JobView] = OrderedDict()
        self._flights: dict[FlightKey, _Flight] = {}
        self._copiers: dict[tuple[str, str, CopyOptions], _SharedCopier] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._submit_lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> int:
        """Mark jobs a previous process left queued or running as interrupted; count them.

        With a queue, the copies those jobs left on it are aborted.
        """
        stale = await self.state.interrupt_jobs(keep=list(self._jobs))
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
        return None if info is None else _stored_view(info)

    async def list(self, limit: int = 50) -> list[JobView]:
        """Return the latest jobs, newest first (live ones with live progress)."""
        views = []
        for info in await self.state.list_jobs(limit):
            live = self.view(info.id)
            views.append(live if live is not None else _stored_view(info))
        return views

    def running(self) -> builtins.list[JobView]:
        """Return the jobs of this process still queued or running."""
        return [job.view() for job in self._jobs.values() if not job.finished]

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job and wait until it stopped; False if it is not."""
        job = self._jobs.get(job_id)
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

    async def _submit(self, request: MirrorRequest) -> tuple[_Job, bool, builtins.list[_Plan]]:
        if self._closed:
            raise RuntimeError("the job manager is closed")
        plans = [_plan(entry, request, self.policy) for entry in request.mirrors]
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
            job = _Job(job_id, request, request_json, plans, created)
            self._jobs[job_id] = job
            job.task = asyncio.create_task(self._run(job), name=f"ocimirror job {job_id}")
        log.info("job submitted", job=job_id, entries=len(plans))
        return job, False, plans

    async def _run(self, job: _Job) -> None:
        """Run a job's entries, `workers` at a time, and record how it ended."""
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
            job, "failed" if any(e.status in _BAD for e in job.entries) else "succeeded"
        )

    async def _entry(self, job: _Job, index: int, plan: _Plan, workers: asyncio.Semaphore) -> None:
        """Run one entry of a job and record its outcome."""
        result = job.entries[index]
        try:
            if plan.error is not None:
                outcome = _Outcome.failed(plan.error)
            else:
                async with workers:
                    result.status = "running"
                    outcome = await self._await_flight(job, index, plan)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: the entry fails, the job goes on
            log.exception("job entry crashed", job=job.id, entry=index)
            outcome = _Outcome.failed(public_message(e))
        _apply(result, outcome)
        await self._save(job)

    async def _await_flight(self, job: _Job, index: int, plan: _Plan) -> _Outcome:
        """Await the copy of `plan`: the one in flight, else a new one."""
        flight = self._flights.get(plan.key)
        if flight is None:
            flight = _Flight(plan)
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
                return _Outcome("cancelled", error=CANCELLED_ERROR)  # stopped by another
            if task.done() and not task.cancelled() and task.exception() is None:
                _apply(job.entries[index], task.result())  # it finished as we were stopped
            raise
        finally:
            flight.waiters -= 1
            job.flights.pop(index, None)
            if flight.waiters == 0 and not task.done():
                task.cancel()  # nobody else wants it
                job.orphans.add(task)
                if self._flights.get(plan.key) is flight:
                    del self._flights[plan.key]  # a new ask copies anew, not "cancelled"

    def _landed(self, key: FlightKey, flight: _Flight) -> Callable[[asyncio.Task[_Outcome]], None]:
        """Return a done callback forgetting `flight` (so the next ask copies anew)."""

        def forget(_task: asyncio.Task[_Outcome]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]

        return forget

    async def _save(self, job: _Job) -> bool:
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

    async def _persist(self, job: _Job) -> None:
        async with job.lock:
            if job.pending_write is asyncio.current_task():
                job.pending_write = None  # changes from now on need another write
            view = job.view()
            try:
                await self.state.update_job(
                    job.id,
                    state=_to_db(view.state),
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

    async def _finish(self, job: _Job, state: JobState) -> None:
        """Record a job's final state and let its waiters go."""
        job.state = state
        job.finished_at = _now()
        bad = sum(1 for e in job.entries if e.status in _BAD)
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

    async def _stop(self, job: _Job, how: StopState) -> None:
        """Cancel a job (its first stopper decides how it ends) and wait until it stopped."""
        first = job.stop_as is None
        if first:
            job.stop_as = how
        task = job.task
        if task is not None and not task.done():
            if first:
                task.cancel()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if not job.finished:  # cancelled before it ever ran
            job.settle(job.stop_as or how)
            await self._finish(job, job.stop_as or how)

    # -- copying --------------------------------------------------------------------------

    async def _fly(self, flight: _Flight) -> _Outcome:
        """Make one copy: an image, or the selected tags of a repository (the engine's)."""
        plan = flight.plan
        src, dst, options = plan.src, plan.dst, plan.options
        assert src is not None
        assert dst is not None
        copy_options = CopyOptions(
            platforms=options.platforms,
            include_foreign=options.include_foreign,
            referrers=_referrers(options),
        )
        key = (dst.registry, dst.repository, copy_options)
        shared = self._copiers.get(key)
        if shared is None:
            router = _Router()
            copier = Copier(
                options=copy_options, image_concurrency=self.image_concurrency, progress=router
            )
            shared = self._copiers[key] = _SharedCopier(copier, router)
        shared.users += 1
        try:
            planned = await engine.plan(
                [(src, dst)], stores=self._stores, selection=_selection(options)
            )
            if planned.failed:
                failed = planned.failed[0]
                log.warning(
                    "copy failed", source=str(src), destination=str(dst), error=failed.error
                )
                self._count_failure()
                return _Outcome.failed(failed.public_error or scrub(failed.error))
            if self.queue is not None:
                results = await self.queue.copy(
                    planned.tasks, copy_options, stop_timeout=STOP_TIMEOUT
                )
            else:
                # The first copy to a repository lists it; later ones share what it learnt.
                every = options.all_tags and shared.users == 1
                results = await engine.execute(
                    planned.tasks,
                    stores=self._stores,
                    copier=shared.copier,
                    listing="all" if every else "none",
                    watcher=_Credit(shared.router, flight),
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
            outcome = _Outcome.of(results)
            self._count(results)
            return outcome
        except OcimirrorError as e:
            log.warning("copy failed", source=str(src), destination=str(dst), error=str(e))
            self._count_failure()
            return _Outcome.failed(public_message(e))
        except Exception as e:  # a bug: this copy fails, nothing else
            log.exception("copy crashed", source=str(src), destination=str(dst))
            self._count_failure()
            return _Outcome.failed(public_message(e))
        finally:
            shared.users -= 1
            if shared.users == 0:
                shared.copier.cancel()  # stop transfers a cancelled copy left behind
                if self._copiers.get(key) is shared:
                    del self._copiers[key]

    def _host_options(self, ref: Reference) -> HostOptions | None:
        """The config's settings for a registry host, under the address policy."""
        options = host_options(self.config, ref.api_host) if self.config is not None else None
        if self.policy is not None:
            options = replace(options or HostOptions(), address_policy=self.policy)
        return options

    def _count(self, results: Iterable[ImageResult]) -> None:
        """Record image results in the metrics, if any."""
        if self.metrics is None:
            return
        for r in results:
            self.metrics.tasks.labels(METRICS_LABEL, r.status).inc()
            self.metrics.bytes.labels(METRICS_LABEL).inc(r.bytes_copied)
            for how, n in (
                ("copied", r.blobs_copied),
                ("mounted", r.blobs_mounted),
                ("skipped", r.blobs_skipped),
            ):
                if n:
                    self.metrics.blobs.labels(METRICS_LABEL, how).inc(n)

    def _count_failure(self) -> None:
        if self.metrics is not None:
            self.metrics.tasks.labels(METRICS_LABEL, "failed").inc()


__all__ = ["FINAL_STATES", "JobManager", "one_line"]
