"""AIMD: how a registry host's request concurrency and rate back off and recover.

A pure state machine on an injected clock (no sleeping, no I/O): `HostLimiter`
(ratelimit.py) feeds it every request start and every answer, and applies the limits it
holds. The rules:

- **Throttled** (HTTP 429 or 503, or a `RateLimit-Remaining` of 0): multiplicative
  decrease. A rate limit (429, nothing remaining) multiplies the rate by
  `limit_decrease` (0.9: the pace is what was over the limit, by a little); an
  overloaded host (503) multiplies the rate and the concurrency by `decrease` (0.75).
  A 429 cuts the concurrency too once the rate is at its floor; never below the floors
  `min_concurrency` and `min_rate`. One congestion event decreases once: a throttle of
  a request paced before the last decrease (`sent`) changes nothing more, one paced
  after it is a new event at once; without `sent`, throttles within `cooldown` seconds
  of a decrease change nothing more. `Retry-After`, or `RateLimit-Reset` with nothing
  remaining, holds every start until then (at most `max_hold` seconds).
- **Learning a rate**: without a configured one, a rate limit's first throttle learns
  nothing yet (the answers accepted before it include the burst a limiter allows after
  an idle spell, and its refusals come back first): for one window the back-off holds
  below, each halving the concurrency, are the brake, and the next throttle takes
  `limit_decrease` times the answers accepted per second over the last window. An
  overloaded host's first throttle learns at once (over the time since the first start
  when under a window).
- Other 5xx answers change nothing.
- With a `lag` (shared policies, whose answers from other workers arrive up to that late),
  the rate in use and the rate learnt are counted over the window ending `lag` seconds
  ago, whose answers are all in.

Docker Hub's `ratelimit-*` headers and the IETF draft's `RateLimit-Limit` /
`RateLimit-Remaining` / `RateLimit-Reset` (and the combined `RateLimit: limit=...,
remaining=..., reset=...`) are read for the remaining count and reset time only: their
limit is a quota over a window (Docker Hub: manifest pulls per 6 hours), not a request
rate, so it is never turned into one.

Workers sharing a host (`ocimirror worker` on PostgreSQL, workers/hostlimits.py) keep one
policy per host in the database: `state()` writes its whole state as JSON, `load()` reads
it back, and `fresh()` makes a policy of the same settings on another clock; the events
every worker saw (`started`, `note`) are replayed on it in one transaction. Nothing here
knows of that: it stays a state machine on whatever clock it is given.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]

#: Statuses that say "slow down".
THROTTLE_STATUSES = frozenset({429, 503})
#: The window (seconds) starts and accepted answers are counted over.
WINDOW = 1.0
#: The shortest span a first rate is learnt over (seconds).
MIN_SPAN = 0.25


@dataclass(frozen=True)
class Signal:
    """What one answer says about the host's limits."""

    throttled: bool = False
    #: Seconds to hold every start for (Retry-After, or a reset with nothing remaining).
    hold: float | None = None
    #: The announced remaining count, if any.
    remaining: int | None = None


def _number(value: str | None) -> float | None:
    """The leading number of a header value (`76;w=21600` gives 76.0), else None."""
    if not value:
        return None
    try:
        return float(value.split(";", 1)[0].split(",", 1)[0].strip())
    except ValueError:
        return None


def _combined(value: str | None) -> dict[str, float]:
    """The parameters of a combined `RateLimit: limit=10, remaining=0, reset=5` header."""
    out: dict[str, float] = {}
    for part in (value or "").replace(";", ",").split(","):
        key, sep, raw = part.partition("=")
        number = _number(raw) if sep else None
        if number is not None:
            out[key.strip().lower()] = number
    return out


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` value asks for (a number or an HTTP date), else None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        return max(0.0, when - (time.time() if now is None else now))


def signal_of(status: int, headers: Mapping[str, str]) -> Signal:
    """Read an answer's status and headers (case-insensitive mapping) as a Signal."""
    combined = _combined(headers.get("RateLimit"))
    remaining_f = _number(headers.get("RateLimit-Remaining"))
    if remaining_f is None:
        remaining_f = combined.get("remaining")
    reset = _number(headers.get("RateLimit-Reset"))
    if reset is None:
        reset = combined.get("reset")
    remaining = None if remaining_f is None else int(remaining_f)
    exhausted = remaining is not None and remaining <= 0
    hold = retry_after_seconds(headers.get("Retry-After"))
    if hold is None and exhausted and reset is not None:
        hold = max(0.0, reset)
    throttled = status in THROTTLE_STATUSES or exhausted
    return Signal(throttled=throttled, hold=hold if throttled else None, remaining=remaining)


class AimdPolicy:
    """The concurrency and rate one registry host gets now; see the module's rules."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        max_rate: float | None = None,
        min_concurrency: int = 1,
        min_rate: float = 1.0,
        decrease: float = 0.75,
        limit_decrease: float = 0.9,
        increase: float = 0.025,
        cooldown: float = 1.0,
        max_hold: float = 60.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        lag: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 1 <= min_concurrency <= max_concurrency:
            raise ValueError(
                f"min_concurrency must be between 1 and max_concurrency ({max_concurrency}),"
                f" not {min_concurrency!r}"
            )
        if not min_rate > 0:
            raise ValueError(f"min_rate must be above 0, not {min_rate!r}")
        if max_rate is not None and max_rate < min_rate:
            min_rate = max_rate
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be between 0 and 1, not {decrease!r}")
        if not 0 < limit_decrease < 1:
            raise ValueError(f"limit_decrease must be between 0 and 1, not {limit_decrease!r}")
        self.max_concurrency = max_concurrency
        self.max_rate = max_rate
        self.min_concurrency = min_concurrency
        self.min_rate = min_rate
        self.decrease = decrease
        self.limit_decrease = limit_decrease
        self.increase = increase
        self.cooldown = cooldown
        self.max_hold = max_hold
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.lag = lag
        self._clock = clock
        #: Rounds of throttles since the last accepted answer (the back-off's exponent).
        self.strikes = 0
        #: Requests allowed in flight now.
        self.concurrency = max_concurrency
        #: Request starts per second allowed now (None: unlimited, nothing learnt yet).
        self.rate: float | None = max_rate
        #: No request starts before this time (clock seconds).
        self.hold_until = float("-inf")
        #: Decreases so far (one per congestion event).
        self.decreases = 0
        self._last_decrease = float("-inf")
        self._rate_at_decrease = max_rate
        self._last_increase: float | None = None
        self._accepted_in_row = 0
        self._starts: deque[float] = deque()
        self._first_start = float("inf")
        self._first_throttle = float("inf")
        self._accepted: deque[float] = deque()

    #: The settings `fresh` copies, and the state `state` and `load` carry.
    _SETTINGS = (
        "max_concurrency",
        "max_rate",
        "min_concurrency",
        "min_rate",
        "decrease",
        "limit_decrease",
        "increase",
        "cooldown",
        "max_hold",
        "backoff",
        "max_backoff",
        "lag",
    )
    _STATE = (
        "strikes",
        "concurrency",
        "rate",
        "hold_until",
        "decreases",
        "_last_decrease",
        "_rate_at_decrease",
        "_last_increase",
        "_accepted_in_row",
        "_first_start",
        "_first_throttle",
    )

    def fresh(self, clock: Clock, **changes: Any) -> AimdPolicy:
        """A policy with these settings (but `changes`) and no history, on `clock`."""
        settings = {name: getattr(self, name) for name in self._SETTINGS}
        return AimdPolicy(**{**settings, **changes}, clock=clock)

    def state(self) -> dict[str, Any]:
        """Everything this policy learnt, as JSON values (infinities as None)."""
        out: dict[str, Any] = {}
        for name in self._STATE:
            value = getattr(self, name)
            out[name] = None if isinstance(value, float) and abs(value) == float("inf") else value
        out["_starts"] = list(self._starts)
        out["_accepted"] = list(self._accepted)
        return out

    def load(self, state: Mapping[str, Any]) -> None:
        """Take on what `state()` wrote (of a policy with the same settings)."""
        infinite = {"hold_until": -1, "_last_decrease": -1, "_first_start": 1, "_first_throttle": 1}
        for name in self._STATE:
            if name not in state:
                continue
            value = state[name]
            if value is None and name in infinite:
                value = infinite[name] * float("inf")
            setattr(self, name, value)
        self._starts = deque(float(t) for t in state.get("_starts", ()))
        self._accepted = deque(float(t) for t in state.get("_accepted", ()))

    def _trim(self, times: deque[float], now: float) -> int:
        """Forget times before the window ending `lag` ago; count those within it."""
        while times and times[0] <= now - WINDOW - self.lag:
            times.popleft()
        later = 0
        if self.lag:
            for t in reversed(times):
                if t <= now - self.lag:
                    break
                later += 1
        return len(times) - later

    def started(self) -> None:
        """Note one request start."""
        now = self._clock()
        if self._first_start == float("inf"):
            self._first_start = now
        self._starts.append(now)
        self._trim(self._starts, now)

    def answered(
        self, status: int, headers: Mapping[str, str], *, sent: float | None = None
    ) -> Signal:
        """Note one answer (to a request paced at clock time `sent`); return what it said."""
        signal = signal_of(status, headers)
        self.note(status, signal, sent=sent)
        return signal

    def note(self, status: int, signal: Signal, *, sent: float | None = None) -> None:
        """Note one answer already read as `signal` (see `answered`)."""
        if signal.throttled:
            self.throttled(signal.hold, overloaded=status == 503, sent=sent)
        elif status < 500:
            self.accepted()

    def throttled(
        self, hold: float | None = None, *, overloaded: bool = True, sent: float | None = None
    ) -> None:
        """The host said slow down: decrease once per congestion event, hold if asked.

        A congestion event is the throttle of a request paced after the last decrease
        (`sent`, when known: the requests of the old pace still coming back change
        nothing more, and one of the new pace refused cuts again at once), else any
        throttle `cooldown` seconds after it.

        A rate limit (not `overloaded`: a 429, nothing remaining) cuts the rate, and the
        concurrency only once the rate is at its floor: requests waiting for the pace are
        in flight too, and a cut there would stall a slow host far below its rate. An
        overloaded host (503) has both cut.
        """
        now = self._clock()
        self._accepted_in_row = 0
        if hold is not None and hold > 0:
            self.hold_until = max(self.hold_until, now + min(hold, self.max_hold))
        elif now >= self.hold_until:  # no wait named, and a new round: back off
            self.strikes += 1
            wait = min(self.max_backoff, self.backoff * 2.0 ** (self.strikes - 1))
            self.hold_until = now + wait
            if self.rate is None and not overloaded:
                # No pace yet: fewer in flight is the only brake until one is learnt.
                halved = int(self.concurrency * 0.5)
                self.concurrency = max(self.min_concurrency, halved)
        if sent is not None and sent < self._last_decrease:
            return
        if sent is None and now - self._last_decrease < self.cooldown:
            return
        history = now - self._first_start
        if self._first_throttle == float("inf"):
            self._first_throttle = now
        if self.rate is None and not overloaded and now - self._first_throttle < WINDOW:
            # Too soon to tell a rate: the answers accepted so far include the burst a
            # limiter allows after an idle spell, and its refusals come back before the
            # answers it let through. For a window the holds above (and the concurrency
            # they halve) are the brake; a throttle after it learns the rate from the
            # answers accepted over it, the limiter's steady rate.
            return
        self._last_decrease = now
        self.decreases += 1
        factor = self.decrease if overloaded else self.limit_decrease
        if overloaded or self.rate == self.min_rate:
            self.concurrency = max(self.min_concurrency, int(self.concurrency * factor))
        base = self.rate
        if base is None:
            # Answers accepted per second over the last window (or since the first
            # start, when that is shorter: an overloaded host in the first second).
            span = min(WINDOW, max(history, MIN_SPAN))
            base = float(self._trim(self._accepted, now)) / span
            if not overloaded:  # the pace is the brake from now on
                self.concurrency = self.max_concurrency
        self.rate = max(self.min_rate, base * factor)
        self._rate_at_decrease = max(self.rate / factor, self.min_rate)
        self._last_increase = now

    def accepted(self) -> None:
        """The host served a request: increase additively, up to the ceilings."""
        now = self._clock()
        self._accepted.append(now)
        self._trim(self._accepted, now)
        self._accepted_in_row += 1
        if self.rate is not None:  # in the first window the back-off goes on doubling
            self.strikes = 0
        if self._accepted_in_row >= self.concurrency:
            self._accepted_in_row = 0
            self.concurrency = min(self.max_concurrency, self.concurrency + 1)
        if self.rate is None:
            return
        last = now if self._last_increase is None else self._last_increase
        self._last_increase = now
        used = self._trim(self._starts, now) / WINDOW >= 0.5 * self.rate
        if not used:
            return
        step = self.increase * (self._rate_at_decrease or self.rate)
        self.rate += max(step, self.min_rate * self.increase) * min(max(now - last, 0.0), WINDOW)
        if self.max_rate is not None:
            self.rate = min(self.rate, self.max_rate)

    def hold_left(self) -> float:
        """Seconds left before requests may start again (0.0 when none)."""
        return max(0.0, self.hold_until - self._clock())
