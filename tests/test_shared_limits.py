"""A registry's limits held across workers: the pace, the back-off and the reserve in
PostgreSQL (workers/hostlimits.py), on a real PostgreSQL (conftest's `pg_url`).

Unit-level, three `PgHostLimits` on separate pools stand for three workers, and their
answers are fed by hand: the starts they are given are one schedule at the shared rate,
one worker's 429 with Retry-After holds the others' starts, one congestion event
decreases once, the remaining count one was told holds every client's manifest GETs.
Then three real `ocimirror worker` processes copy through a front that allows RATE
requests per second (429 above it) with `requests_per_second: RATE` configured: the
front refuses few, where three unshared paces would each send RATE.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from multidict import CIMultiDict

from ocimirror.aimd import signal_of
from ocimirror.client import HostOptions, RegistryClient
from ocimirror.ratelimit import HostLimiter
from ocimirror.state.db import StateDB
from ocimirror.testkit.command import Background, run_ocimirror
from ocimirror.testkit.front import Front, TokenBucket, rate_limited
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.throttled import seed_tiny
from ocimirror.workers.hostlimits import PgHostLimits
from ocimirror.workers.schema import ensure_schema

HOST = "limited.example:5000"


@pytest.fixture
async def workers(pg_url: str) -> AsyncIterator[list[PgHostLimits]]:
    """Three workers' shared limits on one database (none set as the process's)."""
    async with StateDB(pg_url) as state:
        await ensure_schema(state)
    # Applied when a test says (no flush in the background), no lag: all answers are in.
    made = [PgHostLimits(pg_url, max_connections=2, flush=3600, lag=0) for _ in range(3)]
    for limits in made:
        await limits.open()
    try:
        yield made
    finally:
        HostLimiter.shared = None
        for limits in made:
            await limits.close()


def limiter(**kwargs: object) -> HostLimiter:
    made = HostLimiter(**kwargs)  # type: ignore[arg-type]
    made.host = HOST
    return made


def answer(status: int, **values: str) -> tuple[int, CIMultiDict[str]]:
    return status, CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


async def test_three_workers_starts_are_one_schedule_at_the_shared_rate(
    workers: list[PgHostLimits],
) -> None:
    rate = 10.0
    limiters = [limiter(requests_per_second=rate, adaptive=False) for _ in workers]
    starts = []
    for i in range(30):  # asked far faster than 10 a second, in turn
        delay, taken = await workers[i % 3].start(limiters[i % 3])
        starts.append(taken + delay)
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts[10:])]
    # The burst (10) starts at once; after it, one start every 1/rate across all three
    # (each worker's own pace would give three starts per 1/rate).
    assert min(gaps) >= 1 / rate - 1e-4, gaps  # (epoch seconds in doubles)
    assert starts[-1] - starts[0] >= (30 - 10) / rate - 1e-4


async def test_one_workers_retry_after_holds_the_others_starts(
    workers: list[PgHostLimits],
) -> None:
    a, b, c = workers
    la, lb = limiter(), limiter()
    _, sent = await a.start(la)
    status, hdrs = answer(429, Retry_After="30")
    a.answered(la, status, signal_of(status, hdrs), sent)
    await a.flush()
    delay, _ = await b.start(lb)
    assert 25 < delay <= 30  # the database's time moved on a little since
    # Through the limiter of a worker whose shared limits they are: it sleeps the hold.
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    lc = limiter(sleep=sleep)
    HostLimiter.shared = c
    async with lc.slot():
        pass
    assert len(slept) == 1
    assert 25 < slept[0] <= 30


async def test_one_congestion_event_decreases_once_across_workers(
    workers: list[PgHostLimits],
) -> None:
    a, b, _ = workers
    la, lb = limiter(requests_per_second=20.0), limiter(requests_per_second=20.0)
    _, sent_a = await a.start(la)
    _, sent_b = await b.start(lb)  # both sent at the pace before any decrease
    status, hdrs = answer(429)
    a.answered(la, status, signal_of(status, hdrs), sent_a)
    b.answered(lb, status, signal_of(status, hdrs), sent_b)
    await a.flush()
    await b.flush()
    await a.start(la)
    view = a.view(HOST)
    assert view is not None
    assert view.rate == pytest.approx(18.0)  # 20 x 0.9 once, not twice
    # A request paced after that decrease and refused is a new event: a second cut.
    _, sent = await b.start(lb)
    b.answered(lb, status, signal_of(status, hdrs), sent)
    await b.flush()
    await a.start(la)
    assert view.rate == pytest.approx(18.0 * 0.9)
    # Accepted answers of every worker raise it again (the pace in use: starts counted
    # across both).
    for _ in range(40):
        for limits, one in ((a, la), (b, lb)):
            _, sent = await limits.start(one)
            limits.started(one, sent)
            ok, plain = answer(200)
            limits.answered(one, ok, signal_of(ok, plain), sent)
    await a.flush()
    await b.flush()
    await a.start(la)
    assert view.rate > 18.0 * 0.9


async def test_the_remaining_count_one_worker_was_told_holds_every_worker(
    workers: list[PgHostLimits],
) -> None:
    a, b, _ = workers
    la, lb = limiter(), limiter()
    await a.start(la)
    await b.start(lb)
    HostLimiter.shared = b
    client = RegistryClient(HOST, options=HostOptions(rate_limit_reserve=10))
    client.limiter.host = HOST
    await b.start(client.limiter)
    assert not client._below_reserve()  # nothing known anywhere
    a.note_remaining(HOST, 3)  # worker a's answer said 3 left
    await a.flush()
    await b.start(client.limiter)  # any start of b reads it back
    assert client.rate_limit_remaining is None  # b's own client was told nothing
    assert client._below_reserve()
    # The registry stops limiting (a HEAD without the header, seen by a): all go on.
    a.note_remaining(HOST, None)
    await a.flush()
    await b.start(client.limiter)
    assert not client._below_reserve()
    await client.close()


# -- three worker processes against a rate-limited front ------------------------------

#: Requests per second the front allows, and images: a manifest, a config and a layer
#: per image (and the planner's HEADs) make some 4 x TAGS requests at RATE a second.
RATE = 20.0
TAGS = 30


async def test_three_workers_share_a_registrys_rate(
    registry_pair: tuple[LocalRegistry, LocalRegistry], tmp_path: Path, pg_url: str
) -> None:
    src, dst = registry_pair
    bucket = TokenBucket(RATE)
    async with Front(src, rate_limited(bucket)).running() as front:
        config = tmp_path / "mirror.yaml"
        config.write_text(
            "execution: workers\n"
            "registries:\n"
            f"  '{front.host}': {{requests_per_second: {RATE}}}\n"
            "mirrors:\n"
            "  - name: many\n"
            f"    source: {front.host}/many\n"
            f"    targets: [{dst.host}/many]\n"
            "    referrers: {enabled: false}\n"
        )
        started = []
        try:
            for name in ("a", "b", "c"):
                args = ["worker", "-c", str(config), "--state", pg_url, "--name", name]
                started.append(Background([*args, "--concurrency", "4"], tmp_path / name))
            await seed_tiny(src, "many", TAGS)  # while the workers start
            await asyncio.to_thread(
                wait_for, lambda: _registered(pg_url) == 3, "the workers to register", 120
            )
            out = await asyncio.to_thread(
                run_ocimirror, "sync", "-c", str(config), "--state", pg_url, timeout=300
            )
            assert out.returncode == 0, out.stdout + out.stderr
        finally:
            for w in started:
                if w.proc.poll() is None:
                    w.stop(signal.SIGTERM)
                w.kill()
    assert sorted(dst.tags("many")) == sorted(f"t{i:04d}" for i in range(TAGS))
    total = bucket.allowed + bucket.refused
    print(f"shared: {bucket.allowed} allowed, {bucket.refused} refused of {total}")
    assert bucket.allowed >= 3 * TAGS  # a manifest, a config and a layer per image
    # Three unshared paces of RATE each send 3 x RATE (most refused, bench/workers.py);
    # one shared pace sends RATE, a few refused where arrivals bunch.
    assert bucket.refused <= max(10, 0.1 * total), bucket.refused
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT rate FROM ocimirror_host_limits WHERE host = %s", (front.host,)
        ).fetchone()
    assert row is not None
    assert row[0] <= RATE


def _registered(url: str) -> int:
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0
