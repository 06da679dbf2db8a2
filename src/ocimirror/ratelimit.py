"""Per-host request limits: `Pacer` spaces request starts, `HostLimiter` adds the rest.

`HostLimiter.for_host` is the one limiter of a registry host in the process: requests in
flight capped, starts paced, both following the AIMD policy of aimd.py when adaptive.
A process that shares its hosts' limits with others (`ocimirror worker`s on PostgreSQL)
sets `HostLimiter.shared` (`SharedLimits`): then the places in flight, the pace, the
policy's state and the remaining count of every host live there, and this process's
pacer and policy only hold the settings.

Pacer: spaces request starts to at most a given rate, with a small burst allowance.

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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from contextvars import ContextVar
from typing import ClassVar, Protocol

from .aimd import AimdPolicy, Signal, signal_of

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]

#: The burst of a learnt pace, in seconds of its rate.
BURST_SECONDS = 0.1

#: When the current task's last request took its slot (its pace was decided then).
_SLOT_TAKEN: ContextVar[float | None] = ContextVar("ocimirror_slot_taken", default=None)


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

    @property
    def sleep(self) -> Sleep:
        """The sleep this pacer waits with."""
        return self._sleep

    def set_rate(self, rate: float, *, burst: int | None = None) -> None:
        """Pace at `rate` from the next slot on (bursts of `burst`, else max(1, int(rate)))."""
        if not rate > 0:
            raise ValueError(f"a request rate must be above 0, not {rate!r}")
        self.rate = rate
        self.burst = max(1, int(rate)) if burst is None else max(1, burst)
        self._interval = 1.0 / rate

    async def wait(self) -> float:
        """Wait for the next slot; return how long that took in the clock's seconds.

        A caller cancelled while it waits leaves its slot unused: the pace stays on the
        safe side rather than handing the slot to another caller early.
        """
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
        return delay


class SharedView(Protocol):
    """A host's shared limits as this process last read them."""

    @property
    def rate(self) -> float | None:
        """Request starts per second among every process (None: unlimited)."""
        ...

    @property
    def concurrency(self) -> int:
        """Requests in flight among every process."""
        ...

    @property
    def remaining(self) -> int | None:
        """The last remaining count any process was told (None: none known)."""
        ...

    @property
    def remaining_known(self) -> bool:
        """Whether any process heard of a remaining count (or of none being kept)."""
        ...


class SharedLimits(Protocol):
    """A host's limits shared with other processes (`ocimirror worker`s)."""

    def slot(self, host: str, limit: int) -> AbstractAsyncContextManager[None]:
        """Hold one of the `limit` places of `host` among every process sharing them."""
        ...

    async def start(self, limiter: HostLimiter) -> tuple[float, float]:
        """Take the host's next start among every process: (seconds to wait, its time)."""
        ...

    def started(self, limiter: HostLimiter, at: float) -> None:
        """Note that a request started at shared time `at`."""
        ...

    def answered(
        self, limiter: HostLimiter, status: int, signal: Signal, sent: float | None
    ) -> None:
        """Note an answer (to a request that took its start at shared time `sent`)."""
        ...

    def note_remaining(self, host: str, remaining: int | None) -> None:
        """Note the remaining count the host announced (None: it keeps none now)."""
        ...

    def view(self, host: str) -> SharedView | None:
        """The host's shared limits as last read (None before its first start here)."""
        ...


class HostLimiter:
    """The limits of one registry host, shared by every client of it in the process.

    A request takes a slot: first a place among the requests in flight (capped at the
    policy's concurrency when adaptive), then a start in the pace (and after any hold a
    `Retry-After` asked for); the place is given back once the answer's headers are in.
    Answers feed the `AimdPolicy`, whose rate the pacer follows. Without `adaptive` the
    limits stay as configured: a fixed pace, concurrency left to the connection pool.
    """

    _hosts: ClassVar[dict[tuple[object, ...], HostLimiter]] = {}
    #: Set by a process that shares its hosts' limits with others (queue workers): each
    #: request also holds one of the host's places there and takes its start from the
    #: shared pace; answers feed the shared policy.
    shared: ClassVar[SharedLimits | None] = None

    def __init__(
        self,
        *,
        max_concurrency: int = 32,
        requests_per_second: float | None = None,
        adaptive: bool = True,
        min_concurrency: int = 1,
        min_rate: float = 1.0,
        pacer: Pacer | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pacer = pacer or Pacer(requests_per_second, clock=clock, sleep=sleep)
        self.host = ""
        self.max_concurrency = max_concurrency
        self.policy: AimdPolicy | None = None
        if adaptive:
            self.policy = AimdPolicy(
                max_concurrency=max_concurrency,
                max_rate=requests_per_second,
                min_concurrency=min_concurrency,
                min_rate=min_rate,
                clock=clock,
            )
        self._sleep = sleep if pacer is None else pacer.sleep
        self._clock = clock
        #: Requests in flight (between their slot and their answer's headers).
        self.in_flight = 0
        #: Answers that said slow down (429, 503, nothing remaining).
        self.throttled = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @classmethod
    def for_host(
        cls,
        host: str,
        *,
        max_concurrency: int = 32,
        requests_per_second: float | None = None,
        adaptive: bool = True,
        min_concurrency: int = 1,
        min_rate: float = 1.0,
    ) -> HostLimiter:
        """The process's limiter for `host` with these limits (made on first use).

        Clients of one host with the same settings share it (every mirror and job); a
        client configured otherwise gets its own, so one setting never caps another.
        """
        key: tuple[object, ...] = (host.lower(), max_concurrency, requests_per_second)
        key += (adaptive, min_concurrency, min_rate)
        limiter = cls._hosts.get(key)
        if limiter is None:
            limiter = cls._hosts[key] = cls(
                max_concurrency=max_concurrency,
                requests_per_second=requests_per_second,
                adaptive=adaptive,
                min_concurrency=min_concurrency,
                min_rate=min_rate,
            )
            limiter.host = host.lower()
        return limiter

    @classmethod
    def forget_hosts(cls) -> None:
        """Drop every host's limiter (the next `for_host` makes a fresh one): tests."""
        cls._hosts.clear()

    def _shared(self) -> SharedLimits | None:
        """The limits this host shares with other processes, if it shares them."""
        shared = HostLimiter.shared
        return shared if shared is not None and self.host else None

    def _view(self) -> SharedView | None:
        shared = self._shared()
        return None if shared is None else shared.view(self.host)

    @property
    def concurrency(self) -> int | None:
        """Requests allowed in flight now (None: not capped here)."""
        if self.policy is None:
            return None
        view = self._view()
        return self.policy.concurrency if view is None else view.concurrency

    @property
    def rate(self) -> float | None:
        """Request starts per second allowed now (None: unlimited)."""
        view = self._view()
        return self.pacer.rate if view is None else view.rate

    def note_remaining(self, remaining: int | None) -> None:
        """Share the remaining count the host announced, when its limits are shared."""
        shared = self._shared()
        if shared is not None:
            shared.note_remaining(self.host, remaining)

    def remaining(self, local: int | None) -> int | None:
        """The host's remaining count: the shared one when shared and known, else `local`."""
        view = self._view()
        return view.remaining if view is not None and view.remaining_known else local

    def _full(self) -> bool:
        limit = self.concurrency
        return limit is not None and self.in_flight >= limit

    def _wake(self) -> None:
        """Wake as many waiters as there are free places (they check again)."""
        free = (self.concurrency or 0) - self.in_flight
        while self._waiters and free > 0:
            waiter = self._waiters.popleft()
            if waiter.done() or waiter.get_loop().is_closed():
                continue
            with suppress(RuntimeError):
                waiter.set_result(None)
                free -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a place in flight and a start in the pace for one request."""
        while self._full():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()
                raise
        self.in_flight += 1
        try:
            shared = self._shared()
            if shared is not None:
                async with shared.slot(self.host, self.concurrency or self.max_concurrency):
                    delay, taken = await shared.start(self)
                    _SLOT_TAKEN.set(taken)
                    if delay > 0:
                        await self._sleep(delay)
                    shared.started(self, taken + delay)
                    yield
                return
            _SLOT_TAKEN.set(self._clock())
            delay = self.pacer.reserve()
            if self.policy is not None:
                delay = max(delay, self.policy.hold_left())
            if delay > 0:
                await self._sleep(delay)
            if self.policy is not None:
                self.policy.started()
            yield
        finally:
            self.in_flight -= 1
            self._wake()

    def answered(self, status: int, headers: Mapping[str, str]) -> Signal | None:
        """Feed one answer of the host to the policy; the pace follows its rate.

        The answer is taken as the one to this task's last request (a task sends one at
        a time), whose slot time tells the policy whether it went out at the pace of
        before or after the last decrease.
        """
        if self.policy is None:
            return None
        shared = self._shared()
        if shared is not None:
            signal = signal_of(status, headers)
            if signal.throttled:
                self.throttled += 1
            shared.answered(self, status, signal, _SLOT_TAKEN.get())
            self._wake()
            return signal
        signal = self.policy.answered(status, headers, sent=_SLOT_TAKEN.get())
        if signal.throttled:
            self.throttled += 1
        rate = self.policy.rate
        if rate is not None and rate != self.pacer.rate:
            # A learnt pace starts at most a tenth of a second's requests at once: after a
            # hold, a second's worth in one burst would meet a limiter with its bucket
            # still empty.
            self.pacer.set_rate(rate, burst=int(rate * BURST_SECONDS))
        self._wake()
        return signal
