"""A copy in flight, shared by every entry asking for it, and the Copier flights share.

A `Flight` is one copy in progress (an `asyncio` task) with the number of entries awaiting
it and the bytes it moved so far. Flights to the same destination repository with the same
copy options share one `Copier` (`SharedCopier`) while any of them runs, so a blob two of
them need is uploaded once; its progress is credited back to the flight copying each
destination (`Router`, fed by the engine's watcher `Credit`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..transfer.copy import Copier, ImageResult
from ..transfer.plan import CopyTask
from .entries import Outcome, Plan


class Router:
    """The progress of a shared Copier, credited to the flight copying each destination."""

    def __init__(self) -> None:
        self.flights: dict[str, Flight] = {}

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
class SharedCopier:
    """A Copier shared by the flights to one destination repository while any runs."""

    copier: Copier
    router: Router
    users: int = 0


class Credit:
    """Credits the bytes of each image a flight copies to that flight (an engine Watcher)."""

    def __init__(self, router: Router, flight: Flight) -> None:
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


class Flight:
    """One copy in progress, shared by every entry asking for the same one."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.waiters = 0
        self.bytes = 0
        self.task: asyncio.Task[Outcome] | None = None
