"""A registry's limits held across every worker: the pace, the back-off, the reserve.

`PgHostLimits` is what `ocimirror worker` sets as `HostLimiter.shared`. Per registry host
one row of `ocimirror_host_limits` (workers/schema.py) holds what every worker obeys:

- **the pace**: a GCRA in SQL. Each request start is one round trip, an `INSERT … ON
  CONFLICT DO UPDATE` of the host's row that moves its theoretical arrival time on by
  `1 / rate` (`tat = greatest(tat, now) + 1 / rate`) and returns it, with the hold and
  the rest of the row; the worker then sleeps locally until its slot (`tat - burst /
  rate`, the same schedule as `ratelimit.Pacer`) or the end of the hold, whichever is
  later. Times are the database's (`now()`), so workers on machines whose clocks differ
  share one schedule.
- **the back-off** (aimd.py): the row keeps the whole `AimdPolicy` state as JSON (its
  `state()`), and the rate, concurrency, burst and hold-until it decides, as columns the
  pace reads. A worker notes its starts and answers as events, on the database's time
  (its own clock plus the offset its last round trip measured), and applies them in one
  transaction: the row locked (`SELECT … FOR UPDATE`), the policy loaded on a clock
  that reads each event's time (never going back), the events replayed through the
  policy's own `started` and `note`, the state and its decisions written back (the
  policy counts the rate in use and learns one over the window ending two flushes ago,
  when every worker's answers are in: its `lag`). aimd.py
  stays a pure state machine; the only shared thing is its state. So a throttle one
  worker saw decreases the rate and concurrency of all, once per congestion event (its
  request's start is compared with the shared last decrease), a Retry-After holds every
  worker's starts, and the additive increase counts every worker's answers. Throttles
  are applied at once (a background task woken for them); the other events every
  `FLUSH` seconds, so accepted answers cost no round trip of their own.
- **the reserve**: the last remaining count any worker was told (and when, on the
  database's time: the latest wins), read back with every start; a client holds its
  manifest GETs while the shared count is below its `rate_limit_reserve`.

The places in flight (`max_concurrency`, now the shared policy's concurrency) stay
advisory locks (slots.py). The cost per request: the place (two round trips) and the
pace (one); per worker and host, one transaction every `FLUSH` seconds while it works,
and one per throttle.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from ..aimd import Signal
from ..ratelimit import BURST_SECONDS, HostLimiter
from .slots import PgSlots

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

#: Seconds between two applications of a worker's accepted answers and starts.
FLUSH = 0.25
#: Seconds late other workers' answers may reach the shared policy (two flushes).
LAG = 2 * FLUSH
#: Events kept per host while they cannot be applied (the database away).
MAX_EVENTS = 10_000
#: Connections for the pace and the policy's transactions (beside the places' pool).
CONNECTIONS = 3

_START = """
INSERT INTO ocimirror_host_limits AS h
    (host, tat, rate, burst, concurrency, hold_until, seen)
VALUES (%(host)s, extract(epoch FROM now()) + coalesce(1.0 / %(rate)s, 0), %(rate)s,
        %(burst)s, %(concurrency)s, 0, extract(epoch FROM now()))
ON CONFLICT (host) DO UPDATE SET
    tat = CASE WHEN h.rate IS NULL THEN h.tat
               ELSE greatest(h.tat, excluded.seen) + 1.0 / h.rate END,
    seen = excluded.seen
RETURNING h.seen, h.tat, h.rate, h.burst, h.concurrency, h.hold_until,
          h.remaining, h.remaining_at
"""


def pace_delay(now: float, tat: float, rate: float | None, burst: int) -> float:
    """Seconds from `now` to the start a GCRA slot ending the schedule at `tat` allows."""
    if rate is None:
        return 0.0
    return max(0.0, tat - burst / rate - now)


@dataclass(frozen=True)
class Event:
    """A start (no `signal`) or an answer, at database time `at`."""

    at: float
    status: int = 0
    signal: Signal | None = None
    #: The answered request's start (database time).
    sent: float | None = None


@dataclass
class HostState:
    """One host's shared limits as this worker last read them, and its unsent events."""

    rate: float | None
    concurrency: int
    burst: int = 1
    remaining: int | None = None
    #: When `remaining` was announced (database time; None: never).
    remaining_at: float | None = None
    #: Events not applied yet: starts and answers.
    events: list[Event] = field(default_factory=list)
    #: The remaining count to write (value, time), if one was announced here.
    announced: tuple[int | None, float] | None = None
    #: A limiter of the host (its settings make the policy replayed on).
    limiter: HostLimiter | None = None

    @property
    def remaining_known(self) -> bool:
        """Whether any worker heard of a remaining count (or of none being kept)."""
        return self.remaining_at is not None


class PgHostLimits:
    """Every worker's limits per registry host, kept in PostgreSQL (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 32,
        flush: float = FLUSH,
        lag: float = LAG,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.places = PgSlots(url, max_connections=max_connections)
        self.flush_every = flush
        self.lag = lag
        self._clock = clock
        self._pool: AsyncConnectionPool[AsyncConnection] | None = None
        self._hosts: dict[str, HostState] = {}
        #: The database's time minus this process's clock (from the last round trip).
        self._offset = 0.0
        self._urgent = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        #: Starts taken, and transactions that applied events.
        self.starts = 0
        self.applied = 0

    async def open(self) -> None:
        """Open the connection pools and start applying events in the background."""
        from psycopg_pool import AsyncConnectionPool

        await self.places.open()
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=CONNECTIONS,
            kwargs={"autocommit": True},
            open=False,
        )
        await self._pool.open(wait=True)
        self._flusher = asyncio.create_task(self._flush_loop())

    async def close(self) -> None:
        """Apply what is left, stop, close the pools."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._pool is not None:
            try:
                await self.flush()
            except Exception:  # closing anyway: the next worker's answers will say
                log.exception("could not apply the last answers to the shared limits")
            await self._pool.close()
            self._pool = None
        await self.places.close()

    def _now(self) -> float:
        """The database's time now, as this process reckons it."""
        return self._clock() + self._offset

    def _host(self, limiter: HostLimiter) -> HostState:
        state = self._hosts.get(limiter.host)
        if state is None:
            policy = limiter.policy
            state = self._hosts[limiter.host] = HostState(
                rate=limiter.pacer.rate,
                concurrency=policy.concurrency if policy else limiter.max_concurrency,
                burst=limiter.pacer.burst,
            )
        if state.limiter is None and limiter.policy is not None:
            state.limiter = limiter
        return state

    # -- SharedLimits -----------------------------------------------------------------

    def slot(self, host: str, limit: int) -> AbstractAsyncContextManager[None]:
        """Hold one of the `limit` places of `host` among every worker (slots.py)."""
        return self.places.slot(host, limit)

    async def start(self, limiter: HostLimiter) -> tuple[float, float]:
        """Take the host's next start: one round trip; (seconds to wait, its time)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the shared host limits are not open")
        state = self._host(limiter)
        params = {
            "host": limiter.host,
            "rate": limiter.pacer.rate,
            "burst": limiter.pacer.burst,
            "concurrency": state.concurrency,
        }
        async with pool.connection() as conn:
            before = self._clock()
            cur = await conn.execute(_START, params)
            row = await cur.fetchone()
            after = self._clock()
        assert row is not None
        now, tat, rate, burst, concurrency, hold_until, remaining, remaining_at = row
        self._offset = now - (before + after) / 2
        self.starts += 1
        state.rate, state.burst, state.concurrency = rate, burst, concurrency
        if remaining_at is not None and (
            state.remaining_at is None or remaining_at > state.remaining_at
        ):
            state.remaining, state.remaining_at = remaining, remaining_at
        delay = max(pace_delay(now, tat, rate, burst), hold_until - now, 0.0)
        return delay, now

    def started(self, limiter: HostLimiter, at: float) -> None:
        """Note a start at database time `at` (for the policy's look at the rate in use)."""
        if limiter.policy is not None:
            self._host(limiter).events.append(Event(at))

    def answered(
        self, limiter: HostLimiter, status: int, signal: Signal, sent: float | None
    ) -> None:
        """Note an answer; a throttle is applied at once, the rest with the next flush."""
        if limiter.policy is None:
            return
        state = self._host(limiter)
        state.events.append(Event(self._now(), status, signal, sent))
        if signal.throttled:
            self._urgent.set()

    def note_remaining(self, host: str, remaining: int | None) -> None:
        """Note the host's remaining count (used at once here, shared at once)."""
        state = self._hosts.get(host)
        if state is None:
            return  # no request of this host started here: nothing was announced
        at = self._now()
        state.remaining, state.remaining_at = remaining, at
        state.announced = (remaining, at)
        self._urgent.set()

    def view(self, host: str) -> HostState | None:
        """The host's shared limits as last read."""
        return self._hosts.get(host)

    # -- applying events --------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), self.flush_every)
            self._urgent.clear()
            try:
                await self.flush()
            except Exception:  # the database may be restarting: the events wait
                log.exception("could not apply answers to the shared host limits")
                await asyncio.sleep(self.flush_every)

    async def flush(self) -> None:
        """Apply every host's pending events and remaining count, one transaction each."""
        for host, state in list(self._hosts.items()):
            if state.events or state.announced is not None:
                await self._apply(host, state)

    async def _apply(self, host: str, state: HostState) -> None:
        pool = self._pool
        if pool is None:
            return
        events, state.events = state.events, []
        announced, state.announced = state.announced, None
        try:
            async with pool.connection() as conn, conn.transaction():
                if announced is not None:
                    await conn.execute(
                        "UPDATE ocimirror_host_limits SET remaining = %s, remaining_at = %s"
                        " WHERE host = %s AND (remaining_at IS NULL OR remaining_at < %s)",
                        (announced[0], announced[1], host, announced[1]),
                    )
                if events and state.limiter is not None:
                    await self._replay(conn, host, state, events)
        except BaseException:
            # Not applied: they go with the next try (the latest MAX_EVENTS of them, should
            # the database stay away).
            state.events[:0] = events
            del state.events[:-MAX_EVENTS]
            if announced is not None and state.announced is None:
                state.announced = announced
            raise
        self.applied += 1

    async def _replay(
        self,
        conn: AsyncConnection,
        host: str,
        state: HostState,
        events: list[Event],
    ) -> None:
        """Replay `events` on the host's shared policy, the row locked; write it back."""
        limiter = state.limiter
        if limiter is None or limiter.policy is None:
            return
        cur = await conn.execute(
            "SELECT policy, clock FROM ocimirror_host_limits WHERE host = %s FOR UPDATE",
            (host,),
        )
        row = await cur.fetchone()
        if row is None:
            return
        saved, high = row
        clock = _Clock(high or float("-inf"))
        policy = limiter.policy.fresh(clock, lag=self.lag)
        if saved:
            policy.load(saved if isinstance(saved, dict) else json.loads(saved))
        for event in sorted(events, key=lambda e: e.at):
            clock.move(event.at)
            if event.signal is None:
                policy.started()
            else:
                policy.note(event.status, event.signal, sent=event.sent)
        from psycopg.types.json import Jsonb

        rate = policy.rate
        burst = state.burst
        if rate is not None and rate != state.rate:
            burst = max(1, int(rate * BURST_SECONDS))
        hold_until = policy.hold_until if policy.hold_until != float("-inf") else 0.0
        await conn.execute(
            "UPDATE ocimirror_host_limits SET policy = %s, clock = %s, rate = %s, burst = %s,"
            " concurrency = %s, hold_until = %s WHERE host = %s",
            (Jsonb(policy.state()), clock.now, rate, burst, policy.concurrency, hold_until, host),
        )
        state.rate, state.burst, state.concurrency = rate, burst, policy.concurrency


class _Clock:
    """The replay's clock: each event's time, never going back."""

    def __init__(self, now: float) -> None:
        self.now = now

    def move(self, at: float) -> None:
        self.now = max(self.now, at)

    def __call__(self) -> float:
        return self.now
