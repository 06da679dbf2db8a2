"""Durations in settings: `30s`, `6h`, `1h30m`, Go's `1h0m0s`, or a number of seconds.

Every face reads durations the same way: a sync schedule's interval, a registry's
`rate_limit_wait`, the proxy's tag TTL.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from fractions import Fraction

__all__ = ["MAX_INTERVAL", "format_interval", "parse_interval"]

MAX_INTERVAL = timedelta(days=36525)
"""The longest interval accepted (100 years): longer is surely a typo."""

_MAX_TEXT = 100
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h|d|w)"
_NUMBER_RE = re.compile(_NUMBER)
_DURATION_RE = re.compile(rf"(?:{_NUMBER}{_UNIT})+")
_PART_RE = re.compile(rf"({_NUMBER})({_UNIT})")
_US_PER_UNIT = {
    "ns": Fraction(1, 1000),
    "us": Fraction(1),
    "µs": Fraction(1),  # MICRO SIGN
    "μs": Fraction(1),  # GREEK SMALL LETTER MU; Go accepts both
    "ms": Fraction(1000),
    "s": Fraction(10**6),
    "m": Fraction(60 * 10**6),
    "h": Fraction(3600 * 10**6),
    "d": Fraction(86400 * 10**6),
    "w": Fraction(7 * 86400 * 10**6),
}
_ACCEPTED = (
    "expected 0 (on demand), a number of seconds, or a duration such as "
    "30s, 30m, 6h, 1d, 1w, 1h30m or 1h0m0s (units w, d, h, m, s, ms, us, ns)"
)


def _invalid(text: object, why: str = "") -> ValueError:
    detail = f" ({why})" if why else ""
    return ValueError(f"invalid interval {text!r}{detail}: {_ACCEPTED}")


def _from_microseconds(text: object, us: Fraction) -> timedelta:
    if us < 0:
        raise _invalid(text, "negative")
    if us > MAX_INTERVAL / timedelta(microseconds=1):
        raise _invalid(text, f"longer than {format_interval(MAX_INTERVAL)}")
    rounded = round(us)
    if us and not rounded:
        raise _invalid(text, "shorter than a microsecond")
    return timedelta(microseconds=rounded)


def parse_interval(text: str | int | float) -> timedelta:
    """Parse an interval such as `30s`, `6h`, `1h30m`, `1h0m0s` or `90` (seconds); `0` is 0."""
    if isinstance(text, bool):
        raise _invalid(text, "a boolean")
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise _invalid(text)
        return _from_microseconds(text, Fraction(text) * 10**6)
    if not isinstance(text, str):
        raise _invalid(text, f"a {type(text).__name__}")
    s = text.strip().lower()
    if len(s) > _MAX_TEXT:
        raise _invalid(text, "too long")
    if s.startswith("-"):
        raise _invalid(text, "negative")
    s = s.removeprefix("+")
    if _NUMBER_RE.fullmatch(s):
        return _from_microseconds(text, Fraction(s) * 10**6)
    if not _DURATION_RE.fullmatch(s):
        raise _invalid(text)
    total = sum(
        (Fraction(n) * _US_PER_UNIT[unit] for n, unit in _PART_RE.findall(s)), start=Fraction(0)
    )
    return _from_microseconds(text, total)


def format_interval(td: timedelta) -> str:
    """Format an interval compactly, as `1d6h`, `30m`, `1m30s` or `0`; parse_interval reads it."""
    if td < timedelta(0):
        raise ValueError(f"cannot format a negative interval: {td!r}")
    us = td // timedelta(microseconds=1)
    if not us:
        return "0"
    parts = []
    for unit, size in (
        ("d", 86400 * 10**6),
        ("h", 3600 * 10**6),
        ("m", 60 * 10**6),
        ("s", 10**6),
        ("ms", 1000),
        ("us", 1),
    ):
        n, us = divmod(us, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
