"""The procrastinate side: the app on the state database, and the copy jobs put on it.

One job is one image copy (source reference → destination), with the copy options it
needs; its queue is named after the destination registry (`ocimirror:HOST`), so the
depth per registry is procrastinate's own count per queue. Each job carries two locks
keyed on the destination: the queueing lock (a second pass asking for a destination
whose copy is still queued joins that job instead of adding one) and the lock (two jobs
for one destination never run at once, on any worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..reference import Reference
from ..state.db import StateDB
from ..transfer.copy import CopyOptions
from ..transfer.plan import CopyTask
from ..transfer.referrers import ReferrerOptions
from .schema import procrastinate_url

if TYPE_CHECKING:
    from procrastinate import App

#: The procrastinate task name of one image copy.
COPY_TASK = "ocimirror.copy"
#: Every copy queue's name starts so: `ocimirror:HOST` (the destination registry).
QUEUE_PREFIX = "ocimirror:"


def queue_for(destination: Reference) -> str:
    """The queue of the copies to a destination's registry (or place)."""
    return QUEUE_PREFIX + (destination.registry or destination.transport)


@dataclass(frozen=True)
class CopyJob:
    """The arguments of one queued copy (JSON in procrastinate's jobs table)."""

    source: str
    destination: str
    source_digest: str = ""
    dst_absent: bool = False
    platforms: tuple[str, ...] = ()
    include_foreign: bool = False
    referrers: dict[str, Any] = field(default_factory=dict)
    #: The address policy of a jobs API copy (`{"allowed": [...], "allow_private": bool}`);
    #: empty: a trusted caller (a sync pass of the config), any address.
    policy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, task: CopyTask, options: CopyOptions) -> CopyJob:
        """The job of an engine task copied with `options`."""
        referrers = asdict(options.referrers)
        return cls(
            source=str(task.source),
            destination=str(task.destination),
            source_digest=task.source_digest,
            dst_absent=task.dst_absent,
            platforms=tuple(options.platforms),
            include_foreign=options.include_foreign,
            referrers={k: list(v) if isinstance(v, tuple) else v for k, v in referrers.items()},
        )

    def args(self) -> dict[str, Any]:
        """The job's arguments as procrastinate stores them."""
        out = asdict(self)
        out["platforms"] = list(self.platforms)
        return out

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> CopyJob:
        """Read a job back from its arguments."""
        return cls(
            source=str(args["source"]),
            destination=str(args["destination"]),
            source_digest=str(args.get("source_digest") or ""),
            dst_absent=bool(args.get("dst_absent")),
            platforms=tuple(args.get("platforms") or ()),
            include_foreign=bool(args.get("include_foreign")),
            referrers=dict(args.get("referrers") or {}),
            policy=dict(args.get("policy") or {}),
        )

    def task(self) -> CopyTask:
        """The engine's task of this job."""
        return CopyTask(
            Reference.parse(self.source),
            Reference.parse(self.destination),
            source_digest=self.source_digest,
            dst_absent=self.dst_absent,
        )

    def options(self) -> CopyOptions:
        """The copy options of this job."""
        r = self.referrers
        interval = r.get("check_interval")
        return CopyOptions(
            platforms=self.platforms,
            include_foreign=self.include_foreign,
            referrers=ReferrerOptions(
                enabled=bool(r.get("enabled", True)),
                include=tuple(r.get("include") or ()),
                exclude=tuple(r.get("exclude") or ()),
                require_signed=bool(r.get("require_signed")),
                check_immutable=bool(r.get("check_immutable")),
                check_interval=None if interval is None else float(interval),
            ),
        )


def make_app(state: StateDB, *, max_connections: int = 4) -> App:
    """A procrastinate app on the state database (open it with `open_async()`)."""
    from procrastinate import App, PsycopgConnector

    connector = PsycopgConnector(
        conninfo=procrastinate_url(state), min_size=1, max_size=max_connections
    )
    return App(connector=connector)


async def defer(app: App, jobs: Sequence[CopyJob]) -> int:
    """Enqueue each copy; one whose destination is already queued joins it. Count joins."""
    return sum(1 for queued in await defer_each(app, jobs) if queued is None)


async def defer_each(app: App, jobs: Sequence[CopyJob]) -> list[int | None]:
    """Enqueue each copy; its procrastinate job id, or None where it joined a queued one."""
    from procrastinate.exceptions import AlreadyEnqueued

    ids: list[int | None] = []
    for job in jobs:
        destination = Reference.parse(job.destination)
        deferrer = app.configure_task(
            COPY_TASK,
            queue=queue_for(destination),
            lock=job.destination,
            queueing_lock=job.destination,
        )
        try:
            ids.append(await deferrer.defer_async(**job.args()))
        except AlreadyEnqueued:
            ids.append(None)
    return ids
