"""A gate in front of a registry: a point mid-run that a test can wait for, and hold.

`UploadGate(after=N)` is an `Intercept` for `front.Front`. It forwards everything, counts
the blob uploads the registry completed (a `PUT ...?digest=` answered 201), and once N
have completed sets `reached` and holds every later request until `release()`. A test
awaits `reached` (an event, not a sleep), and then knows the run is mid-way and stays
there: some blobs are complete at the target, the rest wait at the gate. It can then
kill or stop the process under test, or the registry, and see what each leaves behind.

Requests held when `release()` is called belonged to the run that was stopped: they are
answered 503 (their client is usually gone), never forwarded, so the only uploads the
registry sees afterwards are those of the next run. While the registry itself is down,
the gate answers 502 as a load balancer in front of it would, and counts those answers
in `unreachable` (`down_seen` is set at the first).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from .front import Front, kind_of, registry_error

__all__ = ["UploadGate"]


class UploadGate:
    """Holds a registry's requests once `after` blob uploads have completed."""

    def __init__(self, after: int, *, hold: bool = True) -> None:
        """Hold after `after` completed uploads (only count them if not `hold`)."""
        self.after = after
        self.hold = hold
        self.completed = 0
        self.held = 0
        self.unreachable = 0
        self.reached = asyncio.Event()
        self.down_seen = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        """Let requests through again; those held so far are answered 503."""
        self._released.set()

    async def __call__(
        self, front: Front, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        """Decide one request: hold it, or forward it and count a completed upload."""
        if self.hold and self.reached.is_set() and not self._released.is_set():
            self.held += 1
            await self._released.wait()
            return registry_error(503, "UNAVAILABLE")
        try:
            response = await front.forward(request, body)
        except (aiohttp.ClientError, OSError):
            self.unreachable += 1
            self.down_seen.set()
            return registry_error(502, "UNAVAILABLE")
        upload = request.method == "PUT" and kind_of(request) == "upload"
        if upload and "digest" in request.query and response.status == 201:
            self.completed += 1
            if self.completed >= self.after:
                self.reached.set()
        return response
