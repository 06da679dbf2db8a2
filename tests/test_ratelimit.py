"""Pacer on fake time: a clock that only moves when a caller sleeps."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocimirror.ratelimit import Pacer


class FakeTime:
    """A clock and a sleep: sleeping moves the clock (unless frozen); sleeps are recorded."""

    def __init__(self, *, frozen: bool = False) -> None:
        self.now = 0.0
        self.frozen = frozen  # frozen: sleeps are recorded, the clock stays put
        self.sleeps: list[float] = []

    def clock(self) -> float:
        """The fake time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, move the clock by it and let other tasks run."""
        self.sleeps.append(seconds)
        if not self.frozen:
            self.now += seconds
        await asyncio.sleep(0)

    def pacer(self, rate: float | None, burst: int | None = None) -> Pacer:
        """A Pacer on this fake time."""
        return Pacer(rate, burst=burst, clock=self.clock, sleep=self.sleep)


async def test_sequential_requests_are_evenly_spaced() -> None:
    fake = FakeTime()
    pacer = fake.pacer(5, burst=1)
    starts = []
    for _ in range(10):
        await pacer.wait()
        starts.append(fake.now)
    assert starts == pytest.approx([i * 0.2 for i in range(10)])
    assert fake.sleeps == pytest.approx([0.2] * 9)  # the first one goes at once
    assert pacer.slots == 10
    assert pacer.waited == pytest.approx(1.8)


async def test_concurrent_waiters_get_distinct_slots() -> None:
    # All eight ask at the same instant (the clock stands still while they sleep).
    fake = FakeTime(frozen=True)
    pacer = fake.pacer(4, burst=1)
    delays = await asyncio.gather(*(pacer.wait() for _ in range(8)))
    # Each took its own slot when it asked, in the order they asked: 0, 0.25, 0.5...
    assert delays == pytest.approx([i * 0.25 for i in range(8)])
    assert fake.sleeps == pytest.approx(delays[1:])
    assert pacer.slots == 8


async def test_burst_then_steady_rate() -> None:
    fake = FakeTime()
    pacer = fake.pacer(10)  # burst defaults to int(rate)
    assert pacer.burst == 10
    assert pacer.interval == pytest.approx(0.1)
    delays = [pacer.reserve() for _ in range(13)]
    assert delays[:10] == [0.0] * 10
    assert delays[10:] == pytest.approx([0.1, 0.2, 0.3])


async def test_idle_time_refills_the_burst() -> None:
    fake = FakeTime()
    pacer = fake.pacer(2, burst=2)
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])
    fake.now = 100.0
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])
    # A burst is never more than `burst`, however long the pause.
    fake.now = 10_000.0
    assert [pacer.reserve() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.5, 1.0])


async def test_no_waiting_when_unlimited() -> None:
    fake = FakeTime()
    pacer = fake.pacer(None)
    assert await asyncio.gather(*(pacer.wait() for _ in range(100))) == [0.0] * 100
    assert fake.sleeps == []
    assert pacer.slots == 100  # still counted
    assert pacer.interval == 0.0


def test_a_fractional_rate_has_a_burst_of_one() -> None:
    fake = FakeTime()
    pacer = fake.pacer(0.5)
    assert pacer.burst == 1
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0.0, 2.0, 4.0])


@pytest.mark.parametrize("rate", [0, -1.0, float("nan")])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        Pacer(rate)


def test_burst_must_be_positive() -> None:
    with pytest.raises(ValueError, match="burst"):
        Pacer(5, burst=0)


@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60),
)
def test_never_more_than_burst_plus_rate_times_window(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """In any window of T seconds at most `burst + rate * T` requests start."""
    fake = FakeTime()
    pacer = fake.pacer(rate, burst=burst)
    starts = []
    for gap in gaps:
        fake.now += gap
        starts.append(fake.now + pacer.reserve())
    assert starts == sorted(starts)
    eps = 1e-9 * max(1.0, starts[-1])
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            window = starts[j] - first
            assert j - i + 1 <= burst + rate * window + 1e-6 + rate * eps
