"""Pacer: spaces request starts to at most a given rate, with a small burst allowance.

It schedules slots the way a GCRA (generic cell rate algorithm, the virtual-time form of a
token bucket) does: each slot is `1 / rate` seconds after the previous one, and up to
`burst` slots may start at once after an idle spell. A slot is taken synchronously when a
caller asks for it, so concurrent callers get distinct slots in the order they asked, and
only then sleeps until its slot comes. The clock and the sleep are injectable, so tests can
run it on fake time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class Pacer:
    """Hands out request start slots at most `rate` per second (unlimited when None)."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"a request rate must be above 0, not {rate!r}")
        if burst is None:
            burst = max(1, int(rate)) if rate is not None else 1
        if burst < 1:
            raise ValueError(f"a burst must be at least 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._interval = 1.0 / rate if rate is not None else 0.0
        #: The theoretical time of the next slot once the burst allowance is spent.
        self._next = float("-inf")
        #: Slots handed out so far (one per request start, waited or not).
        self.slots = 0
        #: Seconds callers were told to wait, in total.
        self.waited = 0.0

    @property
    def interval(self) -> float:
        """Seconds between two slots at the steady rate (0.0 when unlimited)."""
        return self._interval

    def reserve(self) -> float:
        """Take the next slot now; return the seconds until it starts (0.0 when due)."""
        self.slots += 1
        if self.rate is None:
            return 0.0
        now = self._clock()
        due = max(self._next, now)
        # Up to `burst - 1` slots ahead of the steady schedule may start at once.
        start = max(now, due - (self.burst - 1) * self._interval)
        self._next = due + self._interval
        delay = start - now
        self.waited += delay
        return delay

    async def wait(self) -> float:
        """Wait for the next slot; return how long that took in the clock's seconds.

        A caller cancelled while it waits leaves its slot unused: the pace stays on the
        safe side rather than handing the slot to another caller early.
        """
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
        return delay
