"""Schedules for `ocimirror run`: intervals, cron expressions, jitter and the next run time.

A schedule is written in the configuration as one of

- an interval: `30s`, `30m`, `6h`, `1d`, `1w`, combinations such as `1h30m`, Go durations such
  as `1h0m0s` or `1.5h` (docker-sync's `interval`), or a bare number of seconds;
- a cron expression of five fields (`0 3 * * *`) or an alias (`@hourly`, `@daily`, ...),
  evaluated in UTC;
- `0` (or nothing): on demand only, never run by the daemon on its own;
- `once`: one pass each time the daemon starts, then on demand only (Docker Mirror
  Image's `refresh = 0`: mirror what is missing, never refresh).

Decisions the planner relies on:

- a mirror that never ran, and an interval mirror whose next run is overdue (the daemon was
  down), runs at `after`, once, without jitter: missed runs are not replayed;
- a run that lies in the future gets a random delay in `[0, jitter_bound)` so that mirrors
  sharing a schedule do not all hit the registry in the same second;
- a cron schedule runs at the first slot strictly after both `after` and `last_run`, like cron
  itself: a slot missed while the daemon was down is skipped, not caught up.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .durations import MAX_INTERVAL, format_interval, parse_interval

if TYPE_CHECKING:
    from .config import Mirror

__all__ = ["DEFAULT_SCHEDULE", "Schedule", "schedule_of"]

#: The schedule of a mirror that names none (and has no default).
DEFAULT_SCHEDULE = "6h"

_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELDS = "minute hour day-of-month month day-of-week"
_CRON_JITTER_BASIS = timedelta(minutes=1)
_CRON_CHECK_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def _check_cron(expr: str) -> str:
    """Validate a cron expression and return it normalised (single spaces, lower-case alias)."""
    s = " ".join(expr.split())
    if s.startswith("@"):
        if s.lower() not in _CRON_ALIASES:
            raise ValueError(
                f"invalid cron expression {expr!r}: unknown alias; "
                f"expected one of {', '.join(_CRON_ALIASES)}"
            )
        return s.lower()
    fields = s.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"invalid cron expression {expr!r}: expected 5 fields ({_CRON_FIELDS}), "
            f"got {len(fields)}"
        )
    # croniter is imported for cron schedules only: `status` and a daemon of interval
    # schedules need none of it (0.04 s of CPU at a loaded start, with dateutil).
    from croniter import CroniterBadDateError, CroniterError, croniter

    try:
        croniter(s, _CRON_CHECK_FROM, ret_type=datetime).get_next()
    except CroniterBadDateError:
        raise ValueError(f"invalid cron expression {expr!r}: it never matches a date") from None
    except (CroniterError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"invalid cron expression {expr!r}: {e}") from None
    return s


def _utc(dt: datetime, name: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), not naive {dt}")
    return dt.astimezone(UTC)


@dataclass(frozen=True)
class Schedule:
    """When a mirror runs: every `interval`, on a `cron` expression (UTC), or on demand."""

    interval: timedelta | None = None
    cron: str | None = None
    jitter: float = 0.1
    max_jitter: float = 300.0
    #: One pass when the daemon starts, none after (`next_run` is due at once; the daemon
    #: schedules nothing after the pass).
    once: bool = False

    def __post_init__(self) -> None:
        if self.interval is not None and self.cron is not None:
            raise ValueError("a schedule has an interval or a cron expression, not both")
        if self.once and (self.interval is not None or self.cron is not None):
            raise ValueError("a schedule `once` has no interval or cron expression")
        if self.interval is not None:
            if self.interval < timedelta(0):
                raise ValueError(f"negative schedule interval: {self.interval!r}")
            if self.interval > MAX_INTERVAL:
                raise ValueError(f"schedule interval longer than {format_interval(MAX_INTERVAL)}")
            if not self.interval:
                object.__setattr__(self, "interval", None)
        if self.cron is not None:
            object.__setattr__(self, "cron", _check_cron(self.cron))
        if not (math.isfinite(self.jitter) and 0 <= self.jitter <= 1):
            raise ValueError(f"jitter must be a fraction between 0 and 1, not {self.jitter!r}")
        if not (math.isfinite(self.max_jitter) and self.max_jitter >= 0):
            raise ValueError(
                f"max_jitter must be a number of seconds >= 0, not {self.max_jitter!r}"
            )

    @classmethod
    def parse(cls, text: str | int | float | None) -> Schedule:
        """Parse a cron expression (`0 3 * * *`, `@daily`), an interval (`6h`), or 0/None."""
        if text is None:
            return cls()
        if isinstance(text, str):
            s = text.strip()
            if s.lower() == "once":
                return cls(once=True)
            if s.startswith("@") or any(c.isspace() for c in s):
                return cls(cron=s)
        return cls(interval=parse_interval(text))

    @property
    def on_demand(self) -> bool:
        """True when the daemon never runs this mirror on its own."""
        return self.interval is None and self.cron is None and not self.once

    @property
    def jitter_bound(self) -> timedelta:
        """The exclusive upper bound of the random delay added to a future run."""
        if self.cron is not None:
            basis = _CRON_JITTER_BASIS
        elif self.interval is not None:
            basis = self.interval
        else:
            return timedelta(0)
        return timedelta(seconds=min(self.jitter * basis.total_seconds(), self.max_jitter))

    def _jitter(self, rng: random.Random | None) -> timedelta:
        bound_us = self.jitter_bound // timedelta(microseconds=1)
        if bound_us <= 0:
            return timedelta(0)
        r = rng if rng is not None else random.Random()
        return timedelta(microseconds=min(math.floor(r.random() * bound_us), bound_us - 1))

    def next_run(
        self,
        after: datetime,
        *,
        last_run: datetime | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """The next run time (UTC) at or after `after`, given the last run; None if on demand."""
        now = _utc(after, "after")
        last = None if last_run is None else _utc(last_run, "last_run")
        if self.once:
            return now
        if self.cron is not None:
            from croniter import CroniterError, croniter

            base = now if last is None else max(now, last)
            try:
                slot = croniter(self.cron, base, ret_type=datetime).get_next()
            except CroniterError as e:
                raise ValueError(f"cron expression {self.cron!r} after {base}: {e}") from None
            return slot.astimezone(UTC) + self._jitter(rng)
        if self.interval is None:
            return None
        if last is None:
            return now
        try:
            due = last + self.interval
        except OverflowError:
            raise ValueError(f"next run after {last} is beyond the year 9999") from None
        if due <= now:
            return now
        return due + self._jitter(rng)

    def describe(self) -> str:
        """A short human description: `every 6h`, `cron 0 3 * * *` or `on demand`."""
        if self.cron is not None:
            return f"cron {self.cron}"
        if self.interval is not None:
            return f"every {format_interval(self.interval)}"
        if self.once:
            return "once at start"
        return "on demand"


def schedule_of(mirror: Mirror) -> Schedule:
    """The mirror's schedule (6h when the config gives none)."""
    return Schedule.parse(mirror.schedule if mirror.schedule is not None else DEFAULT_SCHEDULE)
