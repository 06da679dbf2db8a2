"""`ocimirror worker`: run queued copies through the engine, record them, recover stalls.

Each job is one image copy, made by the engine's `copy_one` with the config's settings
for each registry host (as a sync pass opens them), then recorded in the state database
by `ledger.record_copy`, which finishes a pass whose last copy this was. Copies to one
destination repository with the same options share a `Copier` while any runs (a blob two
of them need moves once), as in the jobs API.

A worker beats its heart into procrastinate's workers table every `heartbeat` seconds.
Every worker also looks, every `heartbeat`, for copies held by a worker whose heartbeat
is older than `stalled_after` (killed, or its machine lost) and puts them back in the
queue, where another worker takes them: the tag is written last, so the half-done copy
left no tag naming missing content, and the retry finds what already arrived.
SIGTERM (or SIGINT) stops taking jobs and lets the copies running finish.

Each registry host's `max_concurrency` holds across every worker together: a request
also holds one of the host's places in PostgreSQL (`slots.PgSlots`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from ..client import HostOptions
from ..ratelimit import HostLimiter
from ..reference import Reference
from ..settings.config import Config
from ..settings.connection import host_options, pool_for
from ..state.db import StateDB
from ..stores.schemes import scheme_for
from ..transfer import engine
from ..transfer.copy import Copier, CopyOptions, ImageResult
from ..transfer.engine import Side, Stores
from . import ledger, status
from .queue import COPY_TASK, CopyJob, make_app
from .schema import ensure_schema, procrastinate_url
from .slots import PgSlots

if TYPE_CHECKING:
    from procrastinate import App, JobContext

log = structlog.get_logger(__name__)

#: Seconds between heartbeats (and looks for stalled copies), by default.
HEARTBEAT = 10.0
#: Seconds without a heartbeat after which a worker's copies are retried elsewhere.
STALLED_AFTER = 30.0


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
    _copiers: dict[tuple[str, str, CopyOptions], _Shared] = field(default_factory=dict)

    async def run(self, job: CopyJob) -> ImageResult:
        """Copy and record one image; the result is recorded whatever it is."""
        task, options = job.task(), job.options()
        key = (task.destination.registry, task.destination.repository, options)
        shared = self._copiers.get(key)
        if shared is None:
            copier = Copier(options=options, image_concurrency=self.image_concurrency)
            shared = self._copiers[key] = _Shared(copier)
        shared.users += 1
        self.stats.busy += 1
        try:
            result = await engine.copy_one(task, stores=self.stores, copier=shared.copier)
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
        closed = await ledger.record_copy(self.state, job.destination, result)
        self.stats.done += 1
        for run_id in closed:
            log.info("pass finished by this worker", run=run_id)
        return result


def _host_options(config: Config, ref: Reference) -> HostOptions | None:
    return host_options(config, ref.api_host) if scheme_for(ref).registry_host else None


def register(app: App, runner: CopyRunner) -> None:
    """Register the copy task on `app`, run by `runner`."""

    async def copy(context: JobContext, /, **args: Any) -> None:
        await runner.run(CopyJob.from_args(args))

    app.task(name=COPY_TASK, pass_context=True)(copy)


async def recover_stalled(app: App, stalled_after: float) -> int:
    """Put back in the queue the copies held by workers whose heartbeat stopped; count."""
    stalled = list(await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after))
    for job in stalled:
        log.warning("copy of a stalled worker retried", job=job.id, worker=job.worker_id)
        await app.job_manager.retry_job(job)
    return len(stalled)


async def _heartbeat_loop(
    app: App, state: StateDB, name: str, stats: WorkerStats, every: float, stalled_after: float
) -> None:
    """At every heartbeat: say what this worker does, and retry stalled workers' copies."""
    started = datetime.now(UTC)
    while True:
        try:
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
        except Exception:  # the database may be restarting: look again next time
            log.exception("could not record the heartbeat or look for stalled copies")
        await asyncio.sleep(every)


async def run_worker(
    config: Config,
    state_url: str,
    *,
    concurrency: int = 8,
    heartbeat: float = HEARTBEAT,
    stalled_after: float = STALLED_AFTER,
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
        # heartbeat), one per copy + 2 for registry places, the state database's pool.
        app = make_app(state, max_connections=4)
        register(app, runner)
        slots = PgSlots(procrastinate_url(state), max_connections=concurrency + 2)
        await slots.open()
        HostLimiter.shared = slots
        try:
            async with app.open_async():
                recovery = asyncio.create_task(
                    _heartbeat_loop(app, state, name, runner.stats, heartbeat, stalled_after)
                )
                try:
                    log.info("worker started", concurrency=concurrency)
                    await app.run_worker_async(
                        name=name,
                        concurrency=concurrency,
                        update_heartbeat_interval=heartbeat,
                        stalled_worker_timeout=stalled_after,
                        install_signal_handlers=True,
                        wait=True,
                    )
                finally:
                    recovery.cancel()
                    await asyncio.gather(recovery, return_exceptions=True)
                    await status.forget(state, name)
        finally:
            await pool.close()
            HostLimiter.shared = None
            await slots.close()
        log.info("worker stopped", copies=runner.stats.done, failed=runner.stats.failed)
        return runner.stats
