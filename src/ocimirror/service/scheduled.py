"""What `serve -c` needs of the mirrors it runs on schedules beside the API.

The service does not import the sync face: the composition above both faces
(`ocimirror.compose`, wired by `ocimirror.cli`) makes the sync daemon and hands it to
`serve` as a `ScheduledMirrors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..metrics import MirrorMetrics
    from ..settings.config import Config
    from ..settings.loading import Loaded
    from ..state.db import StateDB


class ScheduledMirrors(Protocol):
    """The configured mirrors, each run on its schedule (the sync daemon)."""

    @property
    def config(self) -> Config:
        """Return the config the mirrors run with now (it changes on reload)."""
        ...

    @property
    def next_run(self) -> Mapping[str, datetime | None]:
        """Return when each mirror runs next, by label (None: on demand)."""
        ...

    @property
    def metrics(self) -> MirrorMetrics:
        """Return the metrics the passes count into (the service serves them)."""
        ...

    def busy(self) -> set[str]:
        """Return the mirrors running now, or asked to run and about to start."""
        ...

    def trigger(self, label: str) -> bool:
        """Run a mirror now; False when it is already running (KeyError if unknown)."""
        ...

    def reload(self) -> None:
        """Ask for the config to be read again."""
        ...

    def stop(self) -> None:
        """Ask the mirrors to stop: first time gracefully, second time at once."""
        ...

    async def run(self, *, state: StateDB | None, signals: bool, metrics_server: bool) -> int:
        """Run until stopped; return the exit code."""
        ...


#: Makes the scheduled mirrors of a config file `serve -c FILE` read (given as loaded).
MirrorsFactory = Callable[[Path, "Loaded"], ScheduledMirrors]
