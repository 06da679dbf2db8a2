"""The planning side of `execution: workers`: hand a pass's copies to the queue, await them.

`enqueue` writes the pass's ledger (`ledger.queue_pass`) and then defers one job per copy,
in that order, so a worker finishing a copy always finds the pass waiting for it. The
pass is then the workers' to finish; `await_pass` waits for that and reads back what
they recorded, so the caller renders it as if it had copied in-process.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from ..state.db import StateDB
from ..transfer.copy import ImageResult
from . import ledger
from .ledger import PlannerCounts, QueuedCopy
from .queue import CopyJob, defer, make_app
from .schema import ensure_schema

log = structlog.get_logger(__name__)

#: Seconds between looks at a queued pass's status while awaiting its workers.
POLL = 0.5


async def enqueue(
    state: StateDB,
    run_id: int,
    mirror: str,
    copies: Sequence[tuple[QueuedCopy, CopyJob]],
    counts: PlannerCounts,
) -> int:
    """Queue a pass's copies (its ledger first); return how many joined a queued copy."""
    await ensure_schema(state)
    await ledger.queue_pass(state, run_id, mirror, [c for c, _ in copies], counts)
    app = make_app(state, max_connections=1)
    async with app.open_async():
        joined = await defer(app, [job for _, job in copies])
    log.info("copies queued", mirror=mirror, run=run_id, copies=len(copies), joined=joined)
    return joined


async def await_pass(state: StateDB, run_id: int, *, poll: float = POLL) -> list[ImageResult]:
    """Wait until the workers finished a pass; return the image results they recorded."""
    await ledger.wait_run(state, run_id, poll=poll)
    return await ledger.copy_results(state, run_id)


async def held_runs(state: StateDB) -> set[int]:
    """The runs that queue workers, not a process, still hold (never mark them stopped)."""
    if state.is_sqlite:
        return set()
    await ensure_schema(state)
    return await ledger.open_runs(state)
