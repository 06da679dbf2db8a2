"""A job on the queue (`execution: workers`): its entries planned here, its end read back.

`plan_all` plans every entry of a job in `serve` (the engine's `plan`: which images,
which tags), `parallelism` at a time: an entry it decides (a bad entry, a failed plan,
nothing to copy) gets its result at once, the others their image copies, which
`JobManager` hands to the queue workers (`workers.jobqueue`). The workers then finish the
job; `refresh` takes what they wrote into the job this process still holds.
"""

from __future__ import annotations

import asyncio

import structlog

from ..errors import OcimirrorError, public_message, scrub
from ..state.jobs import JobInfo
from ..transfer import engine
from ..transfer.engine import Stores
from ..workers.queue import CopyJob
from .entries import Outcome, Plan, apply_outcome, copy_options_of, selection_of
from .jobstate import FINAL_STATES, Job, stored_view

log = structlog.get_logger(__name__)


async def plan_all(job: Job, stores: Stores) -> dict[int, list[CopyJob]]:
    """Plan every entry, `parallelism` at a time: the image copies of each (by index).

    An entry decided here gets its result at once and no copies.
    """
    workers = asyncio.Semaphore(job.request.workers)
    copies: dict[int, list[CopyJob]] = {}

    async def one(index: int, plan: Plan) -> None:
        if plan.error is not None:
            apply_outcome(job.entries[index], Outcome.failed(plan.error))
            return
        async with workers:
            planned = await plan_copies(plan, stores)
        if isinstance(planned, Outcome):
            apply_outcome(job.entries[index], planned)
        else:
            copies[index] = planned

    async with asyncio.TaskGroup() as group:
        for index, plan in enumerate(job.plans):
            group.create_task(one(index, plan))
    return copies


async def plan_copies(plan: Plan, stores: Stores) -> Outcome | list[CopyJob]:
    """The image copies of one entry (the engine's plan), or its outcome if decided."""
    src, dst, options = plan.src, plan.dst, plan.options
    assert src is not None
    assert dst is not None
    copy_options = copy_options_of(options)
    try:
        planned = await engine.plan([(src, dst)], stores=stores, selection=selection_of(options))
    except OcimirrorError as e:
        log.warning("copy failed", source=str(src), destination=str(dst), error=str(e))
        return Outcome.failed(public_message(e))
    except Exception as e:  # a bug: this entry fails, nothing else
        log.exception("copy crashed", source=str(src), destination=str(dst))
        return Outcome.failed(public_message(e))
    if planned.failed:
        failed = planned.failed[0]
        log.warning("copy failed", source=str(src), destination=str(dst), error=failed.error)
        return Outcome.failed(failed.public_error or scrub(failed.error))
    if not planned.tasks:
        return Outcome.of([])
    return [CopyJob.of(task, copy_options) for task in planned.tasks]


def refresh(job: Job, info: JobInfo) -> None:
    """Take a handed-over job's entries (and, once finished, its end) from its row."""
    view = stored_view(info)
    job.entries = view.entries
    if view.state in FINAL_STATES:
        job.state = view.state
        job.finished_at = view.finished_at
        job.error = info.error
