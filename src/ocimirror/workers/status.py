"""What the workers are doing: their heartbeats and counts, and the queue depth.

Each worker upserts its row of `ocimirror_workers` at every heartbeat (busy copies,
copies done and failed) and deletes it when it stops; a killed worker's row stays, not
alive once its heartbeat is older than its `stalled_after`, until it is a day old. The
queue depth per destination registry is procrastinate's own count of jobs to do and
being done on each `ocimirror:HOST` queue. `snapshot` gives both to `/metrics` and the
dashboard of `serve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql

from ..state.db import StateDB
from .queue import QUEUE_PREFIX
from .schema import workers

#: A gone worker's row is forgotten this long after its last heartbeat.
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class WorkerView:
    """One worker as the dashboard and metrics show it."""

    name: str
    alive: bool
    busy: int
    done: int
    failed: int
    last_heartbeat: datetime

    def to_json(self) -> dict[str, Any]:
        """The worker as JSON."""
        return {
            "name": self.name,
            "alive": self.alive,
            "busy": self.busy,
            "done": self.done,
            "failed": self.failed,
            "last_heartbeat": self.last_heartbeat.isoformat(),
        }


@dataclass(frozen=True)
class QueueView:
    """The copies waiting for (`todo`) and held by (`doing`) workers, per registry."""

    registry: str
    todo: int
    doing: int


@dataclass(frozen=True)
class WorkersSnapshot:
    """Every worker and the depth of every copy queue."""

    workers: list[WorkerView]
    queues: list[QueueView]

    def to_json(self) -> dict[str, Any]:
        """The snapshot as JSON (the dashboard's `workers` part)."""
        return {
            "workers": [w.to_json() for w in self.workers],
            "queues": [
                {"registry": q.registry, "todo": q.todo, "doing": q.doing} for q in self.queues
            ],
        }


async def beat(
    state: StateDB,
    name: str,
    *,
    started_at: datetime,
    stalled_after: float,
    busy: int,
    done: int,
    failed: int,
) -> None:
    """Record a worker's heartbeat and counts."""
    now = datetime.now(UTC)
    stmt = postgresql.insert(workers).values(
        name=name,
        started_at=started_at,
        last_heartbeat=now,
        stalled_after=stalled_after,
        busy=busy,
        done=done,
        failed=failed,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[workers.c.name],
        set_={
            "started_at": stmt.excluded.started_at,
            "last_heartbeat": stmt.excluded.last_heartbeat,
            "stalled_after": stmt.excluded.stalled_after,
            "busy": stmt.excluded.busy,
            "done": stmt.excluded.done,
            "failed": stmt.excluded.failed,
        },
    )
    async with state.write() as conn:
        await conn.execute(stmt)
        await conn.execute(delete(workers).where(workers.c.last_heartbeat < now - FORGET_AFTER))


async def forget(state: StateDB, name: str) -> None:
    """Remove a worker that stopped cleanly."""
    async with state.write() as conn:
        await conn.execute(delete(workers).where(workers.c.name == name))


async def snapshot(state: StateDB) -> WorkersSnapshot:
    """Every worker (alive or not yet forgotten) and the depth of every copy queue."""
    now = datetime.now(UTC)
    async with state.engine.connect() as conn:
        rows = (await conn.execute(select(workers).order_by(workers.c.name))).all()
        depth = (
            await conn.execute(
                text(
                    "SELECT queue_name, status::text, count(*) FROM procrastinate_jobs"
                    " WHERE status IN ('todo', 'doing') AND queue_name LIKE :prefix"
                    " GROUP BY queue_name, status"
                ),
                {"prefix": QUEUE_PREFIX + "%"},
            )
        ).all()
    views = [
        WorkerView(
            name=r.name,
            alive=(now - r.last_heartbeat).total_seconds() < r.stalled_after,
            busy=int(r.busy),
            done=int(r.done),
            failed=int(r.failed),
            last_heartbeat=r.last_heartbeat,
        )
        for r in rows
    ]
    queues: dict[str, dict[str, int]] = {}
    for queue, status, n in depth:
        queues.setdefault(queue[len(QUEUE_PREFIX) :], {})[status] = int(n)
    return WorkersSnapshot(
        views,
        [
            QueueView(registry, counts.get("todo", 0), counts.get("doing", 0))
            for registry, counts in sorted(queues.items())
        ],
    )
