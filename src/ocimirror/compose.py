"""The composition above the faces: what one face runs of another, wired in one place.

`serve -c FILE` runs the configured mirrors on their schedules beside the HTTP API. The
service face only knows a `ScheduledMirrors`; here the sync face's daemon is made to be
one, and `ocimirror.cli` hands this factory to the `serve` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from .service.scheduled import ScheduledMirrors
    from .settings.loading import Loaded


def scheduled_mirrors(config_path: Path, loaded: Loaded) -> ScheduledMirrors:
    """Return the sync daemon for a config file already read (it rereads it on reload)."""
    from .sync.daemon import Daemon

    # `serve --execution` set the config's execution: it holds across reloads too.
    return Daemon(config_path, loaded=loaded, execution=loaded.config.execution)
