"""The AIMD policy on a fake clock, and the per-host limiter that applies it (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from ocimirror.aimd import AimdPolicy, Signal, signal_of
from ocimirror.client import HostOptions, RegistryClient
from ocimirror.ratelimit import HostLimiter, Pacer


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def headers(**values: str) -> CIMultiDict[str]:
    """Case-insensitive headers, `_` written as `-`."""
    return CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


def policy(clock: Clock, **kwargs: object) -> AimdPolicy:
    return AimdPolicy(max_concurrency=32, clock=clock, **kwargs)  # type: ignore[arg-type]


def run_at(p: AimdPolicy, clock: Clock, rate: float, seconds: float) -> None:
    """Start and have accepted `rate` requests per second for `seconds`."""
    for _ in range(int(rate * seconds)):
        clock.now += 1.0 / rate
        p.started()
        p.accepted()


# -- reading answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hdrs", "expected"),
    [
        (200, {}, Signal()),
        (404, {}, Signal()),
        (500, {}, Signal()),
        (429, {}, Signal(throttled=True)),
        (503, {}, Signal(throttled=True)),
        (429, {"Retry-After": "7"}, Signal(throttled=True, hold=7.0)),
        (200, {"Retry-After": "7"}, Signal()),  # a hint on an accepted answer: no hold
        # IETF draft, separate headers: nothing remaining, reset in 12 s.
        (
            200,
            {"RateLimit-Limit": "100", "RateLimit-Remaining": "0", "RateLimit-Reset": "12"},
            Signal(throttled=True, hold=12.0, remaining=0),
        ),
        (200, {"RateLimit-Remaining": "5", "RateLimit-Reset": "12"}, Signal(remaining=5)),
        # Docker Hub: lower case, with the window as a parameter; no reset header.
        (200, {"ratelimit-remaining": "76;w=21600"}, Signal(remaining=76)),
        (200, {"ratelimit-remaining": "0;w=21600"}, Signal(throttled=True, remaining=0)),
        # IETF draft, combined header.
        (
            200,
            {"RateLimit": "limit=10, remaining=0, reset=3"},
            Signal(throttled=True, hold=3.0, remaining=0),
        ),
        (200, {"RateLimit-Remaining": "many"}, Signal()),
        (429, {"Retry-After": "soon"}, Signal(throttled=True)),
    ],
)
def test_signal_of_reads_status_and_headers(
    status: int, hdrs: dict[str, str], expected: Signal
) -> None:
    assert signal_of(status, CIMultiDict(hdrs)) == expected


def test_a_limit_is_never_turned_into_a_rate() -> None:
    clock = Clock()
    p = policy(clock)
    run_at(p, clock, 40, 2)
    p.answered(200, headers(RateLimit_Limit="100;w=21600", RateLimit_Remaining="99;w=21600"))
    assert p.rate is None
    assert p.concurrency == 32


# -- multiplicative decrease --------------------------------------------------------------


def test_first_throttle_learns_a_rate_from_what_was_accepted_over_the_next_window() -> None:
    """The answers accepted before a limiter's first refusal include the burst it allows
    after an idle spell: the rate is learnt over the window after it, when concurrency
    halved per round of back-off was the brake; the pace takes over from there."""
    clock = Clock()
    p = policy(clock)
    run_at(p, clock, 40, 2)  # 40 accepted in the last second, a burst among them
    p.answered(429, headers())
    assert p.rate is None
    assert p.concurrency == 16
    assert p.decreases == 0
    run_at(p, clock, 20, 1)  # what the limiter lets through, steadily
    clock.now += 0.01
    p.answered(429, headers())
    assert p.rate == pytest.approx(18.0, abs=1.0)  # 90% of it: a rate limit's cut
    assert p.concurrency == 32  # a rate limit: the pace is the cure
    assert p.decreases == 1


@pytest.mark.parametrize(("lag", "learnt"), [(0.0, 9.0), (0.5, 18.0)])
def test_a_lagging_policy_learns_over_the_window_whose_answers_are_in(
    lag: float, learnt: float
) -> None:
    """A shared policy hears other workers' answers up to `lag` late: the last `lag`
    seconds look emptier than they were, so it learns over the window ending then."""
    clock = Clock()
    p = policy(clock, lag=lag)
    run_at(p, clock, 40, 2)
    p.answered(429, headers())
    run_at(p, clock, 20, 1.5)  # what the limiter lets through, steadily
    clock.now += 0.5  # the answers of these 0.5 s are not in yet
    p.answered(429, headers())
    assert p.rate == pytest.approx(learnt, abs=1.0)


def test_one_congestion_event_decreases_once() -> None:
    clock = Clock()
    p = policy(clock, max_rate=40.0)
    run_at(p, clock, 40, 1)
    for _ in range(20):  # the requests in flight all come back refused together
        p.answered(429, headers())
    assert p.decreases == 1
    first = p.rate
    assert first == pytest.approx(36.0)
    clock.now += 1.0  # past the cooldown: a new event
    p.answered(503, headers())
    assert p.decreases == 2
    assert p.rate == pytest.approx(first * 0.75)
    assert p.concurrency == 24  # overloaded: fewer in flight too


def test_a_policy_saved_and_loaded_goes_on_as_the_one_it_was() -> None:
    """What workers sharing a host keep in PostgreSQL: `state()` as JSON, `load()`ed into a
    `fresh()` policy of the same settings, which then decides as the original would."""
    import json

    clock = Clock()
    p = policy(clock)  # no rate: learnt from the first window after a throttle
    run_at(p, clock, 40, 2)
    p.answered(429, headers())
    run_at(p, clock, 20, 0.5)
    saved = json.loads(json.dumps(p.state(), allow_nan=False))  # plain JSON, no infinities
    other = Clock()
    other.now = clock.now
    copy = p.fresh(other)
    assert copy.rate is None
    assert copy.concurrency == 32
    copy.load(saved)
    assert (copy.rate, copy.concurrency, copy.hold_until, copy.strikes) == (
        p.rate,
        p.concurrency,
        p.hold_until,
        p.strikes,
    )
    for one, its in ((p, clock), (copy, other)):  # the same events: the same decisions
        run_at(one, its, 20, 0.5)
        its.now += 0.01
        one.answered(429, headers(), sent=its.now)
    assert copy.rate == p.rate
    assert copy.rate is not None
    assert copy.decreases == p.decreases == 1
    assert copy.state() == p.state()


def test_a_throttle_of_the_new_pace_cuts_again_at_once() -> None:
    """With the time each request was paced at (`sent`), refusals of requests paced
    before the last cut change nothing, and one paced after it is a new event at once."""
    clock = Clock()
    p = policy(clock, max_rate=40.0)
    run_at(p, clock, 40, 1)
    before = clock.now - 0.01
    p.answered(429, headers(), sent=before)
    assert p.rate == pytest.approx(36.0)
    clock.now += 0.05
    for _ in range(10):  # paced at the old rate, answered after the cut
        p.answered(429, headers(), sent=before)
    assert p.decreases == 1
    p.answered(429, headers(), sent=clock.now)
    assert p.decreases == 2
    assert p.rate == pytest.approx(36.0 * 0.9)


def test_floors_hold() -> None:
    clock = Clock()
    p = policy(clock, min_concurrency=2, min_rate=3.0)
    for _ in range(40):
        clock.now += 1.0
        p.answered(429, headers())
    assert p.concurrency == 2
    assert p.rate == 3.0


def test_retry_after_holds_starts_capped() -> None:
    clock = Clock()
    p = policy(clock, max_hold=60.0)
    p.answered(429, headers(Retry_After="5"))
    assert p.hold_left() == 5.0
    clock.now += 2.0
    assert p.hold_left() == 3.0
    p.answered(429, headers(Retry_After="3600"))
    assert p.hold_left() == 60.0
    clock.now += 61.0
    assert p.hold_left() == 0.0


def test_a_throttle_naming_no_wait_backs_off_per_round() -> None:
    """A 429 with `Retry-After: 0` (or none) holds starts all the same: 0.1 s, doubled for
    each round of throttles without an accepted answer, capped; throttles answered while
    a hold runs (the other requests of the same round) do not extend it."""
    clock = Clock()
    p = policy(clock, backoff=0.1, max_backoff=1.0)
    run_at(p, clock, 20, 1)
    p.answered(429, headers(Retry_After="0"))
    assert p.hold_left() == pytest.approx(0.1)
    for _ in range(10):  # the rest of the round
        p.answered(429, headers(Retry_After="0"))
    assert p.hold_left() == pytest.approx(0.1)
    assert p.strikes == 1
    waits = []
    for _ in range(5):
        clock.now += p.hold_left()
        p.answered(429, headers())
        waits.append(p.hold_left())
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])
    p.answered(200, headers())
    assert p.strikes == 0
    clock.now += 1.0
    p.answered(429, headers(Retry_After="0"))
    assert p.hold_left() == pytest.approx(0.1)  # a new storm starts from the bottom
    p.answered(429, headers(Retry_After="3"))
    assert p.hold_left() == pytest.approx(3.0)  # a wait named is the wait


def test_other_server_errors_change_nothing() -> None:
    clock = Clock()
    p = policy(clock)
    run_at(p, clock, 20, 1)
    p.answered(500, headers())
    p.answered(502, headers())
    assert (p.rate, p.concurrency, p.decreases) == (None, 32, 0)


# -- additive increase --------------------------------------------------------------------


def test_rate_grows_back_additively_while_in_use_up_to_the_ceiling() -> None:
    clock = Clock()
    p = policy(clock, max_rate=50.0)
    assert p.rate == 50.0
    run_at(p, clock, 50, 1)
    p.throttled()
    assert p.rate == pytest.approx(37.5)
    # In use at its own rate: +2.5% of the pre-cut level (1.25/s) per second.
    before = p.rate
    run_at(p, clock, p.rate, 1)
    assert p.rate - before == pytest.approx(1.25, abs=0.2)
    for _ in range(20):
        run_at(p, clock, p.rate, 1)
    assert p.rate == 50.0  # the configured limit is the ceiling


def test_an_unused_rate_is_not_raised() -> None:
    clock = Clock()
    p = policy(clock, max_rate=50.0)
    p.throttled()
    run_at(p, clock, 5, 10)  # far below the allowed 37.5/s
    assert p.rate == pytest.approx(37.5)


def test_concurrency_grows_by_one_per_round_of_answers() -> None:
    clock = Clock()
    p = policy(clock)
    p.throttled()
    assert p.concurrency == 24
    for _ in range(23):
        p.accepted()
    assert p.concurrency == 24
    p.accepted()
    assert p.concurrency == 25
    for _ in range(10_000):
        p.accepted()
    assert p.concurrency == 32  # the ceiling


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="min_concurrency"):
        AimdPolicy(max_concurrency=4, min_concurrency=5)
    with pytest.raises(ValueError, match="min_rate"):
        AimdPolicy(max_concurrency=4, min_rate=0)
    with pytest.raises(ValueError, match="decrease"):
        AimdPolicy(max_concurrency=4, decrease=1.5)


# -- the limiter --------------------------------------------------------------------------


def test_clients_of_one_host_share_one_limiter() -> None:
    a = RegistryClient("shared.example:5000")
    b = RegistryClient("SHARED.example:5000")
    other = RegistryClient("other.example:5000")
    fixed = RegistryClient("shared.example:5000", options=HostOptions(adaptive=False))
    assert a.limiter is b.limiter
    assert other.limiter is not a.limiter
    assert fixed.limiter is not a.limiter
    assert fixed.limiter.policy is None
    assert a.limiter is HostLimiter.for_host("shared.example:5000")


async def test_limiter_caps_requests_in_flight_and_follows_the_policy() -> None:
    clock = Clock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds
        await asyncio.sleep(0)

    limiter = HostLimiter(max_concurrency=4, clock=clock, sleep=sleep)
    peak = 0
    release = asyncio.Event()

    async def request() -> None:
        nonlocal peak
        async with limiter.slot():
            peak = max(peak, limiter.in_flight)
            await release.wait()
        limiter.answered(200, headers())

    tasks = [asyncio.create_task(request()) for _ in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert limiter.in_flight == 4  # the other six wait for a place
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 4
    assert limiter.in_flight == 0
    assert waits == []  # no rate yet: nothing paced

    # A 503 with Retry-After: concurrency cut to 3, a rate learnt, starts held 2 s.
    limiter.answered(503, headers(Retry_After="2"))
    assert limiter.throttled == 1
    assert limiter.concurrency == 3
    # 75% of the 10 accepted, over the shortest span a first rate is learnt over (0.25 s:
    # on this clock they all came at once).
    assert limiter.rate == pytest.approx(30.0)
    async with limiter.slot():
        pass
    assert waits == [pytest.approx(2.0)]


async def test_cancelled_waiter_gives_its_turn_away() -> None:
    limiter = HostLimiter(max_concurrency=1, pacer=Pacer(None))
    holding = asyncio.Event()
    done = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot():
            holding.set()
            await done.wait()

    first = asyncio.create_task(hold())
    await holding.wait()
    waiting = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    done.set()
    await first
    assert limiter.in_flight == 0
    async with limiter.slot():  # a place is free again
        assert limiter.in_flight == 1
