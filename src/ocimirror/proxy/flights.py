"""Fetches in flight, so that askers of the same thing wait for the first one to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Flights:
    """Fetches in flight by key, so that askers of the same thing wait for the first one."""

    def __init__(self) -> None:
        """Start with none in flight."""
        self._flying: dict[tuple[str, ...], asyncio.Event] = {}

    def joined(self, key: tuple[str, ...]) -> asyncio.Event | None:
        """Return the event a fetch of `key` in flight sets when done; None when none is."""
        return self._flying.get(key)

    @asynccontextmanager
    async def lead(self, key: tuple[str, ...]) -> AsyncIterator[None]:
        """Be the fetch of `key` in flight until the block ends (however it ends)."""
        done = asyncio.Event()
        self._flying[key] = done
        try:
            yield
        finally:
            if self._flying.get(key) is done:
                del self._flying[key]
            done.set()
