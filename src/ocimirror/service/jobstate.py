"""A job as this process holds it (`Job`) and as the API shows it (`JobView`).

A `Job` is a queued or running job of this process: its request, the plan of each entry,
each entry's result so far and the flights its entries await, from which its view takes
live bytes. A finished job is read back from the state database (`stored_view`), whose
`done` state is the API's `succeeded`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from ..state.jobs import JobInfo
from ..state.schema import INTERRUPTED_ERROR
from ..state.schema import JobState as StoredState
from .entries import Outcome, Plan
from .flights import Flight
from .models import EntryError, EntryResult, JobState, JobView, MirrorRequest, Progress

StopState = Literal["cancelled", "interrupted"]
#: The error of an entry whose job was cancelled before it finished.
CANCELLED_ERROR = "cancelled before the copy finished"

FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
_OPEN: frozenset[str] = frozenset({"pending", "running"})
#: Entry statuses that make a job fail.
BAD_STATES: frozenset[str] = frozenset({"failed", "cancelled"})
_API_STATES: dict[str, JobState] = {
    "queued": "queued",
    "running": "running",
    "done": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "interrupted",
}


def to_db(state: JobState) -> StoredState:
    """Map an API job state to the state database's (`succeeded` is stored as `done`)."""
    return "done" if state == "succeeded" else state


def _from_db(state: str) -> JobState:
    """Map a stored job state to the API's (`done` reads as `succeeded`)."""
    return _API_STATES.get(state, "failed")


class Job:
    """A job of this process: its request, entries and live progress."""

    def __init__(
        self,
        job_id: str,
        request: MirrorRequest,
        request_json: dict[str, Any],
        plans: list[Plan],
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
        self.flights: dict[int, Flight] = {}  # entry index → the copy it awaits
        self.orphans: set[asyncio.Task[Outcome]] = set()  # copies it cancelled
        self.task: asyncio.Task[None] | None = None
        self.stop_as: StopState | None = None
        #: Handed to the queue workers (`execution: workers`): they finish it.
        self.handed = False
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


def _errors(entries: Iterable[EntryResult]) -> list[EntryError]:
    """The failed (or cancelled) entries as Cloud Run mirror errors, by index."""
    return sorted(
        (
            EntryError(index=e.index, name=e.name, error=e.error or e.status)
            for e in entries
            if e.status in BAD_STATES
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


def stored_view(info: JobInfo) -> JobView:
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
