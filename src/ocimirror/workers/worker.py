"""`ocimirror worker`: run queued copies through the engine, record them, recover stalls.

Each job is one image copy, made by the engine's `copy_one` with the config's settings
for each registry host (as a sync pass opens them), then recorded in the state database
by `ledger.record_copy`, which finishes a pass whose last copy this was, and by
`jobqueue.record`, which settles (and finishes) the jobs of the jobs API awaiting it.
Copies to one destination repository with the same options share a `Copier` while any
runs (a blob two of them need moves once), as in the jobs API.

A worker beats its heart into procrastinate's workers table every `heartbeat` seconds.
Every worker also looks, every `heartbeat`, for copies held by a worker whose heartbeat
is older than `stalled_after` (killed, or its machine lost) and puts them back in the
queue, where another worker takes them: the tag is written last, so the half-done copy
left no tag naming missing content, and the retry finds what already arrived.
SIGTERM (or SIGINT) stops taking jobs and lets the copies running finish for `grace`
seconds; those still running then are cancelled and handed back: put back in the queue
at once, unrecorded, for another worker (the tag is written last, so nothing half-done
is named). A copy aborted through the jobs API (`jobqueue`) is cancelled and recorded
failed, `cancelled`, for every pass or job awaiting its destination.

Each registry host's limits hold across every worker together (`hostlimits.PgHostLimits`):
a request also holds one of the host's places in PostgreSQL (`slots.PgSlots`) and takes
its start from the host's shared pace; answers feed the host's shared back-off, and the
remaining count one worker is told holds every worker's manifest GETs below the reserve.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from ..client import HostOptions
from ..netpolicy import AddressPolicy
from ..ratelimit import HostLimiter
from ..reference import Reference
from ..settings.config import Config
from ..settings.connection import host_options, pool_for
from ..state import retention
from ..state.db import StateDB
from ..stores.schemes import scheme_for
from ..transfer import engine
from ..transfer.copy import Copier, CopyOptions, ImageResult
from ..transfer.engine import Side, Stores
from . import jobqueue, ledger, status
from .hostlimits import PgHostLimits
from .prune import prune_queue
from .queue import COPY_TASK, CopyJob, make_app
from .schema import ensure_schema, procrastinate_url

if TYPE_CHECKING:
    from procrastinate import App, JobContext

log = structlog.get_logger(__name__)

#: Seconds between heartbeats (and looks for stalled copies), by default.
HEARTBEAT = 10.0
#: Seconds without a heartbeat after which a worker's copies are retried elsewhere.
STALLED_AFTER = 30.0
#: Seconds a stopping worker lets its running copies finish before handing them back.
GRACE = 25.0
#: The error recorded for a copy aborted through the jobs API.
ABORTED_ERROR = "cancelled before the copy finished"


class HandedBack(Exception):
    """A copy cut short by the worker's stop: procrastinate puts it back in the queue."""


@dataclass
class _Shared:
    copier: Copier
    users: int = 0


@dataclass
class WorkerStats:
    """What this worker did (for logs and its metrics)."""

    busy: int = 0
    done: int = 0
    failed: int = 0
    recovered: int = 0


@dataclass
class CopyRunner:
    """Runs one queued copy through the engine and records it."""

    config: Config
    state: StateDB
    stores: Stores
    image_concurrency: int = 16
    stats: WorkerStats = field(default_factory=WorkerStats)
    #: The queue this runner's copies come from: it defers the next entries of a job.
    app: App | None = None
    _copiers: dict[tuple[str, str, CopyOptions, str], _Shared] = field(default_factory=dict)
    _policed: dict[str, Stores] = field(default_factory=dict)

    def stores_for(self, policy: dict[str, Any]) -> Stores:
        """The stores of a copy: under its address policy, if it has one (jobs API)."""
        if not policy:
            return self.stores
        key = repr(sorted(policy.items()))
        stores = self._policed.get(key)
        if stores is None:
            rules = AddressPolicy(
                allowed=tuple(policy.get("allowed") or ()),
                allow_private=bool(policy.get("allow_private")),
            )

            def options_for(ref: Reference) -> HostOptions:
                options = _host_options(self.config, ref) or HostOptions()
                return replace(options, address_policy=rules)

            side = Side(options_for=options_for)
            stores = self._policed[key] = Stores(self.stores.pool, source=side, destination=side)
        return stores

    async def run(self, job: CopyJob) -> ImageResult:
        """Copy and record one image; the result is recorded whatever it is."""
        task, options = job.task(), job.options()
        policy_key = repr(sorted(job.policy.items()))
        key = (task.destination.registry, task.destination.repository, options, policy_key)
        shared = self._copiers.get(key)
        if shared is None:
            copier = Copier(options=options, image_concurrency=self.image_concurrency)
            shared = self._copiers[key] = _Shared(copier)
        shared.users += 1
        self.stats.busy += 1
        try:
            stores = self.stores_for(job.policy)
            result = await engine.copy_one(task, stores=stores, copier=shared.copier)
        finally:
            self.stats.busy -= 1
            shared.users -= 1
            if shared.users == 0:
                shared.copier.cancel()
                if self._copiers.get(key) is shared:
                    del self._copiers[key]
        if result.status == "failed":
            self.stats.failed += 1
            log.warning(
                "image copy failed",
                source=result.source,
                destination=result.destination,
                error=result.error,
            )
        await self.record(job, result)
        self.stats.done += 1
        return result

    async def record(self, job: CopyJob, result: ImageResult) -> None:
        """Record a copy for every pass and job awaiting its destination."""
        closed = await ledger.record_copy(self.state, job.destination, result)
        await jobqueue.record(self.state, job.destination, result, self.app)
        for run_id in closed:
            log.info("pass finished by this worker", run=run_id)

    async def aborted(self, job: CopyJob) -> None:
        """Record a copy aborted through the jobs API: failed, cancelled, for every waiter."""
        result = ImageResult(
            job.source,
            job.destination,
            status="failed",
            error=ABORTED_ERROR,
            public_error=ABORTED_ERROR,
        )
        self.stats.failed += 1
        await self.record(job, result)


def _host_options(config: Config, ref: Reference) -> HostOptions | None:
    return host_options(config, ref.api_host) if scheme_for(ref).registry_host else None


def register(app: App, runner: CopyRunner) -> None:
    """Register the copy task on `app`, run by `runner`."""
    runner.app = app

    from procrastinate import RetryStrategy
    from procrastinate.job_context import AbortReason

    async def copy(context: JobContext, /, **args: Any) -> None:
        job = CopyJob.from_args(args)
        log.info("copy started", destination=job.destination, job=context.job.id)
        try:
            await runner.run(job)
        except asyncio.CancelledError:
            if context.abort_reason() == AbortReason.SHUTDOWN:
                log.info("copy handed back at shutdown", destination=job.destination)
                raise HandedBack(job.destination) from None
            log.info("copy aborted", destination=job.destination)
            await asyncio.shield(runner.aborted(job))
            raise

    # Only a hand-back is retried (at once); a copy's failure is recorded, not raised.
    retry = RetryStrategy(max_attempts=1000, wait=0, retry_exceptions={HandedBack})
    app.task(name=COPY_TASK, pass_context=True, retry=retry)(copy)


async def recover_stalled(app: App, stalled_after: float) -> int:
    """Put back in the queue the copies held by workers whose heartbeat stopped; count."""
    stalled = list(await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after))
    for job in stalled:
        log.warning("copy of a stalled worker retried", job=job.id, worker=job.worker_id)
        await app.job_manager.retry_job(job)
    return len(stalled)


async def _heartbeat_loop(
    app: App,
    state: StateDB,
    name: str,
    stats: WorkerStats,
    every: float,
    stalled_after: float,
    worker_id: Callable[[], int | None],
    keep: timedelta | None = None,
) -> None:
    """At every heartbeat: say what this worker does, and retry stalled workers' copies.

    Every `retention.EVERY` seconds (and at the first beat) it also deletes the copy jobs
    procrastinate finished longer than `keep` ago, and the ledger copies of passes
    finished as long ago (`keep_history`; None: never).

    It also beats procrastinate's own heartbeat of this worker (`worker_id`): procrastinate
    stops its own as soon as the worker is asked to stop, and copies finishing within the
    grace would otherwise look stalled to the other workers, which would run them again.
    """
    started = datetime.now(UTC)
    loop = asyncio.get_running_loop()
    next_prune = loop.time()
    while True:
        try:
            queue_id = worker_id()
            if queue_id is not None:
                await app.job_manager.update_heartbeat(queue_id)
            await status.beat(
                state,
                name,
                started_at=started,
                stalled_after=stalled_after,
                busy=stats.busy,
                done=stats.done,
                failed=stats.failed,
            )
            stats.recovered += await recover_stalled(app, stalled_after)
            if keep is not None and loop.time() >= next_prune:
                next_prune = loop.time() + retention.EVERY
                pruned = await prune_queue(state, keep)
                if pruned.jobs or pruned.copies:
                    log.info("queue pruned", jobs=pruned.jobs, ledger_copies=pruned.copies)
        except Exception:  # the database may be restarting: look again next time
            log.exception("could not record the heartbeat, look for stalled copies or prune")
        await asyncio.sleep(every)


async def run_worker(
    config: Config,
    state_url: str,
    *,
    concurrency: int = 8,
    heartbeat: float = HEARTBEAT,
    stalled_after: float = STALLED_AFTER,
    grace: float = GRACE,
    name: str | None = None,
) -> WorkerStats:
    """Run queued copies until SIGTERM or SIGINT; return what this worker did."""
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    async with StateDB(state_url) as state:
        await ensure_schema(state)
        pool = pool_for(config)
        side = Side(options_for=lambda ref: _host_options(config, ref))
        runner = CopyRunner(
            config,
            state,
            Stores(pool, source=side, destination=side),
            image_concurrency=config.concurrency,
        )
        # PostgreSQL connections of a worker: 4 for the queue (fetch, finish, LISTEN,
        # heartbeat), one per copy + 2 for registry places, 3 for the shared pace and
        # back-off, the state database's pool.
        app = make_app(state, max_connections=4)
        register(app, runner)
        limits = PgHostLimits(procrastinate_url(state), max_connections=concurrency + 2)
        await limits.open()
        HostLimiter.shared = limits
        try:
            async with app.open_async():
                from procrastinate.worker import Worker

                queue_worker = Worker(
                    app,
                    name=name,
                    concurrency=concurrency,
                    update_heartbeat_interval=heartbeat,
                    stalled_worker_timeout=stalled_after,
                    shutdown_graceful_timeout=grace,
                    install_signal_handlers=False,
                    wait=True,
                )
                recovery = asyncio.create_task(
                    _heartbeat_loop(
                        app,
                        state,
                        name,
                        runner.stats,
                        heartbeat,
                        stalled_after,
                        lambda: queue_worker.worker_id,
                        config.history_limit,
                    )
                )
                loop = asyncio.get_running_loop()

                def on_signal() -> None:
                    log.info(
                        "stopping: no new copies; running ones may finish",
                        running=runner.stats.busy,
                        grace=grace,
                    )
                    queue_worker.stop()  # type: ignore[no-untyped-call]  # procrastinate: untyped

                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, on_signal)
                try:
                    log.info("worker started", concurrency=concurrency)
                    await queue_worker.run()  # type: ignore[no-untyped-call]
                finally:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(sig)
                    recovery.cancel()
                    await asyncio.gather(recovery, return_exceptions=True)
                    await status.forget(state, name)
        finally:
            await pool.close()
            HostLimiter.shared = None
            await limits.close()
        log.info("worker stopped", copies=runner.stats.done, failed=runner.stats.failed)
        return runner.stats
