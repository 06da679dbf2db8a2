"""Schedules: interval parsing (ours, Docker Mirror Image, Go durations), cron, jitter, next run."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocimirror.settings.durations import MAX_INTERVAL, format_interval, parse_interval
from ocimirror.settings.schedule import Schedule

T0 = datetime(2026, 1, 1, 2, 59, tzinfo=UTC)
ACCEPTED = "expected 0 (on demand), a number of seconds, or a duration such as"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d6h", timedelta(days=1, hours=6)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("6H", timedelta(hours=6)),
        ("1H30M", timedelta(hours=1, minutes=30)),
        ("  6h\n", timedelta(hours=6)),
        ("+5m", timedelta(minutes=5)),
        ("90", timedelta(seconds=90)),
        (" 90 ", timedelta(seconds=90)),
        ("0.5", timedelta(milliseconds=500)),
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        ("0", timedelta(0)),
        (0, timedelta(0)),
        ("0s", timedelta(0)),
        ("36525d", MAX_INTERVAL),
        # Docker Mirror Image's `refresh`
        ("15m", timedelta(minutes=15)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_parse_interval(text: str | int | float, expected: timedelta) -> None:
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h0m0s", timedelta(hours=1)),
        ("10m0s", timedelta(minutes=10)),
        ("20m0s", timedelta(minutes=20)),
        ("1h30m0s", timedelta(hours=1, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("1m30.5s", timedelta(minutes=1, seconds=30, milliseconds=500)),
        ("300ms", timedelta(milliseconds=300)),
        ("1500us", timedelta(microseconds=1500)),
        ("1500µs", timedelta(microseconds=1500)),
        ("1500μs", timedelta(microseconds=1500)),
        ("2000ns", timedelta(microseconds=2)),
        ("0s", timedelta(0)),
        (3600, timedelta(hours=1)),
        ("3600", timedelta(hours=1)),
    ],
)
def test_parse_go_durations(text: str | int, expected: timedelta) -> None:
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", ""),
        ("   ", ""),
        ("abc", ""),
        ("6x", ""),
        ("h", ""),
        ("1h 30m", ""),
        ("5 m", ""),
        ("1.2.3s", ""),
        ("6h-", ""),
        ("1e3", ""),
        ("-5m", "(negative)"),
        ("-30", "(negative)"),
        (-30, "(negative)"),
        (-0.5, "(negative)"),
        (float("nan"), ""),
        (float("inf"), ""),
        (True, "(a boolean)"),
        ("1ns", "(shorter than a microsecond)"),
        ("36526d", "(longer than 36525d)"),
        (1e300, "(longer than 36525d)"),
        ("1" * 200, "(too long)"),
    ],
)
def test_parse_interval_rejects(text: str | float, why: str) -> None:
    with pytest.raises(ValueError, match="invalid interval") as info:
        parse_interval(text)
    message = str(info.value)
    assert repr(text) in message
    assert ACCEPTED in message
    assert why in message


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "0"),
        (timedelta(minutes=30), "30m"),
        (timedelta(days=1, hours=6), "1d6h"),
        (timedelta(minutes=1, seconds=30), "1m30s"),
        (timedelta(weeks=2), "14d"),
        (timedelta(hours=1, microseconds=1500), "1h1ms500us"),
    ],
)
def test_format_interval(td: timedelta, text: str) -> None:
    assert format_interval(td) == text


def test_format_interval_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_interval(timedelta(seconds=-1))


@given(st.timedeltas(min_value=timedelta(0), max_value=MAX_INTERVAL))
def test_format_interval_round_trips(td: timedelta) -> None:
    assert parse_interval(format_interval(td)) == td


# --- Schedule.parse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "interval", "cron", "description"),
    [
        ("6h", timedelta(hours=6), None, "every 6h"),
        (" 1h30m ", timedelta(hours=1, minutes=30), None, "every 1h30m"),
        (3600, timedelta(hours=1), None, "every 1h"),
        ("1h0m0s", timedelta(hours=1), None, "every 1h"),
        ("0 3 * * *", None, "0 3 * * *", "cron 0 3 * * *"),
        ("  0  3\t* * *  ", None, "0 3 * * *", "cron 0 3 * * *"),
        ("*/15 * * * MON-FRI", None, "*/15 * * * MON-FRI", "cron */15 * * * MON-FRI"),
        ("@hourly", None, "@hourly", "cron @hourly"),
        ("@DAILY", None, "@daily", "cron @daily"),
        (None, None, None, "on demand"),
        ("0", None, None, "on demand"),
        (0, None, None, "on demand"),
        ("0s", None, None, "on demand"),
    ],
)
def test_schedule_parse(
    text: str | int | None, interval: timedelta | None, cron: str | None, description: str
) -> None:
    s = Schedule.parse(text)
    assert (s.interval, s.cron) == (interval, cron)
    assert s.describe() == description
    assert s.on_demand is (interval is None and cron is None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("61 * * * *", "out of range"),
        ("*/0 * * * *", "not acceptable"),
        ("a b c d e", "not acceptable"),
        ("0 3 * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("0 3 * * * *", "expected 5 fields"),
        ("1h 30m", "expected 5 fields"),
        ("0 0 30 2 *", "never matches"),
        ("@reboot", "unknown alias; expected one of @yearly"),
        ("@every 5m", "unknown alias"),
        ("H 3 * * *", "hash"),
    ],
)
def test_schedule_parse_rejects_bad_cron(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid cron expression") as info:
        Schedule.parse(text)
    assert repr(text) in str(info.value)
    assert message in str(info.value)


def test_schedule_parse_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match=r"invalid interval '6x'"):
        Schedule.parse("6x")


def test_schedule_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="not both"):
        Schedule(interval=timedelta(hours=1), cron="0 3 * * *")
    with pytest.raises(ValueError, match="negative"):
        Schedule(interval=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="invalid cron expression"):
        Schedule(cron="nope")
    with pytest.raises(ValueError, match="jitter"):
        Schedule(interval=timedelta(hours=1), jitter=1.5)
    with pytest.raises(ValueError, match="max_jitter"):
        Schedule(interval=timedelta(hours=1), max_jitter=-1)
    assert Schedule(interval=timedelta(0)) == Schedule()


# --- next_run: intervals ---------------------------------------------------------------------


def test_never_run_interval_runs_at_once_without_jitter() -> None:
    s = Schedule.parse("6h")
    assert s.next_run(T0, rng=random.Random(1)) == T0


def test_future_interval_run_gets_bounded_jitter() -> None:
    s = Schedule.parse("6h")
    last = T0 - timedelta(hours=1)
    due = last + timedelta(hours=6)
    assert s.jitter_bound == timedelta(seconds=300)  # min(10% of 6h, 300s)
    runs = {s.next_run(T0, last_run=last, rng=random.Random(seed)) for seed in range(50)}
    assert all(r is not None and due <= r < due + timedelta(seconds=300) for r in runs)
    assert len(runs) > 40  # the delay really is random


def test_jitter_is_a_fraction_of_short_intervals() -> None:
    s = Schedule.parse("30s")
    assert s.jitter_bound == timedelta(seconds=3)
    last = T0 - timedelta(seconds=10)
    for seed in range(50):
        r = s.next_run(T0, last_run=last, rng=random.Random(seed))
        assert r is not None
        assert last + timedelta(seconds=30) <= r < last + timedelta(seconds=33)


def test_zero_jitter_gives_exact_times() -> None:
    s = Schedule(interval=timedelta(hours=1), jitter=0)
    last = T0 - timedelta(minutes=10)
    assert s.next_run(T0, last_run=last) == last + timedelta(hours=1)


def test_overdue_interval_runs_now_once() -> None:
    s = Schedule.parse("1h")
    last = T0 - timedelta(days=3)  # the daemon was down for 72 runs: run once, now
    assert s.next_run(T0, last_run=last, rng=random.Random(0)) == T0
    assert s.next_run(T0, last_run=T0 - timedelta(hours=1)) == T0  # due exactly now


def test_next_run_is_deterministic_with_a_seeded_rng() -> None:
    s = Schedule.parse("6h")
    last = T0 - timedelta(hours=1)
    a = s.next_run(T0, last_run=last, rng=random.Random(42))
    b = s.next_run(T0, last_run=last, rng=random.Random(42))
    c = s.next_run(T0, last_run=last, rng=random.Random(43))
    assert a == b
    assert a != c


aware = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(
    interval=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=60)),
    after=aware,
    since_last=st.timedeltas(min_value=timedelta(days=-1), max_value=timedelta(days=90)),
    jitter=st.floats(min_value=0, max_value=1),
    max_jitter=st.floats(min_value=0, max_value=3600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_interval_next_run_property(
    interval: timedelta,
    after: datetime,
    since_last: timedelta,
    jitter: float,
    max_jitter: float,
    seed: int,
) -> None:
    s = Schedule(interval=interval, jitter=jitter, max_jitter=max_jitter)
    last = after - since_last  # since_last < 0: a last run in the future (clock skew)
    run = s.next_run(after, last_run=last, rng=random.Random(seed))
    assert run is not None
    assert run.tzinfo is UTC
    assert run >= after
    due = last + interval
    bound = timedelta(seconds=min(jitter * interval.total_seconds(), max_jitter))
    assert s.jitter_bound == bound
    if due > after:
        assert due <= run <= due + bound
        if bound >= timedelta(microseconds=1):
            assert run < due + bound
    else:
        assert run == after
    assert run == s.next_run(after, last_run=last, rng=random.Random(seed))


def test_other_timezones_are_converted_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    s = Schedule.parse("1h")
    run = s.next_run(T0.astimezone(cet))
    assert run == T0
    assert run is not None
    assert run.tzinfo is UTC


# --- next_run: cron ----------------------------------------------------------------------------


def test_cron_runs_at_the_next_slot() -> None:
    s = Schedule(cron="0 3 * * *", jitter=0)
    assert s.next_run(T0) == datetime(2026, 1, 1, 3, 0, tzinfo=UTC)


def test_cron_slot_is_strictly_after() -> None:
    s = Schedule(cron="0 3 * * *", jitter=0)
    at_three = datetime(2026, 1, 1, 3, 0, 0, tzinfo=UTC)
    assert s.next_run(at_three) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    just_before = datetime(2026, 1, 1, 2, 59, 59, 999999, tzinfo=UTC)
    assert s.next_run(just_before) == at_three


def test_cron_hourly() -> None:
    s = Schedule(cron="@hourly", jitter=0)
    assert s.next_run(T0) == datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    assert s.next_run(datetime(2026, 1, 1, 3, 0, tzinfo=UTC)) == datetime(
        2026, 1, 1, 4, 0, tzinfo=UTC
    )


def test_cron_counts_from_the_later_of_after_and_last_run() -> None:
    s = Schedule(cron="0 3 * * *", jitter=0)
    # last_run later than after (a run recorded with a clock ahead): after last_run
    last = datetime(2026, 1, 1, 3, 0, 4, tzinfo=UTC)
    assert s.next_run(T0, last_run=last) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    # an old last_run: the slot missed while down is skipped, like cron
    old = datetime(2025, 12, 1, 3, 0, tzinfo=UTC)
    late = datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    assert s.next_run(late, last_run=old) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)


def test_cron_jitter_is_bounded_by_a_fraction_of_a_minute() -> None:
    s = Schedule.parse("0 3 * * *")
    assert s.jitter_bound == timedelta(seconds=6)
    three = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    runs = {s.next_run(T0, rng=random.Random(seed)) for seed in range(50)}
    assert all(r is not None and three <= r < three + timedelta(seconds=6) for r in runs)
    assert len(runs) > 40
    capped = Schedule(cron="0 3 * * *", jitter=1, max_jitter=2)
    assert capped.jitter_bound == timedelta(seconds=2)


# --- on demand, naive datetimes ---------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "0", 0])
def test_on_demand_never_runs(text: str | int | None) -> None:
    s = Schedule.parse(text)
    assert s.on_demand
    assert s.next_run(T0) is None
    assert s.next_run(T0, last_run=T0 - timedelta(days=365)) is None
    assert s.jitter_bound == timedelta(0)


@pytest.mark.parametrize("text", ["6h", "0 3 * * *", "0"])
def test_naive_datetimes_are_rejected(text: str) -> None:
    s = Schedule.parse(text)
    naive = datetime(2026, 1, 1, 2, 59)
    with pytest.raises(ValueError, match="after must be a timezone-aware datetime"):
        s.next_run(naive)
    with pytest.raises(ValueError, match="last_run must be a timezone-aware datetime"):
        s.next_run(T0, last_run=naive)
