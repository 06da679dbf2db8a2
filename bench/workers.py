"""Benchmark `execution: workers` (issue 19): 1, 2 and 3 workers beside in-process copies.

Run it as `.venv/bin/python bench/workers.py [--corpus small,multiarch] [--workers 1,2,3]
[--tasks 500] [--keep]`, or `--throttled TAGS` for the rows against a rate-limited
source (below). A throwaway PostgreSQL (testkit's `LocalPostgres`) and a source
registry seeded with the corpora of `bench/run.py` (`small`: 200 tags of 3 x 64 KiB
layers, 2 shared; `multiarch`: 20 indexes x 4 platforms of 1 MiB layers). For each corpus,
one cold `ocimirror sync -c FILE` pass into a fresh destination registry and a fresh
database, measured from spawning it to its exit, per variant:

- `in-process`: the pass copies in its own process (the peer every ratio is against);
- `N workers`: the same config with `execution: workers`; N `ocimirror worker
  --concurrency 8` processes are started first and awaited until each has registered
  (so their start-up is not counted), then the pass plans, enqueues and waits for them.

After each pass the destination's tags are checked against the source (every tag, with
its digest). Then the queue's own cost per task is measured without any registry: N
no-op jobs deferred one at a time as the pass defers them (queueing lock and lock on a
destination), then run by one procrastinate worker (`concurrency` 1, then 8); and the
ledger's own write per copy (`ledger.record_copy`: the task result, the synced upsert
and the run's close check, in one transaction), N times on a pass of N queued copies.

`--throttled TAGS [--rate R] [--limits set,learnt]`: the registry limits across workers.
TAGS tiny images (testkit's `seed_tiny`) behind a front that allows R requests per second
and answers 429 above it (`TokenBucket(R)`, bursts of R), copied by one cold pass with 1
and with 3 workers (`--workers`), for each of `--limits`: `set` (`requests_per_second: R`
configured for the front), `fixed` (the same with `adaptive: false`: the pace alone),
`learnt` (nothing configured: the adaptive back-off learns the rate). Printed: requests
the front allowed and refused, the refused share, the achieved rate (allowed requests
over the span from the first to the last allowed one) over R, and the images whose
copy failed (every retry refused).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import psycopg

from ocimirror.state.db import StateDB
from ocimirror.testkit.command import Background, run_ocimirror
from ocimirror.testkit.front import Front, TokenBucket, rate_limited
from ocimirror.testkit.images import SampleImage, corpus_multiarch, corpus_small_tags
from ocimirror.testkit.polling import wait_for
from ocimirror.testkit.postgres import LocalPostgres
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed_sync
from ocimirror.testkit.throttled import seed_tiny
from ocimirror.transfer.copy import ImageResult
from ocimirror.workers import ledger
from ocimirror.workers.ledger import PlannerCounts, QueuedCopy
from ocimirror.workers.queue import make_app
from ocimirror.workers.schema import ensure_schema

CORPORA = {
    "small": lambda: corpus_small_tags(),
    "multiarch": lambda: list(corpus_multiarch()),
}


def new_database(server: str) -> str:
    name = f"b_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name


def registered(url: str) -> int:
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def one_pass(
    work: Path,
    pg: str,
    src: LocalRegistry,
    corpus: str,
    images: list[tuple[str, SampleImage]],
    workers: int,
) -> float:
    """One cold pass of `corpus` (0 workers: in-process); its wall time in seconds."""
    tag = f"{corpus}-{workers}"
    dst = LocalRegistry(work / f"dst-{tag}", exact_counting=False).start()
    started: list[Background] = []
    try:
        url = new_database(pg)
        config = work / f"{tag}.yaml"
        config.write_text(
            f"execution: {'workers' if workers else 'in-process'}\n"
            "mirrors:\n"
            f"  - name: {corpus}\n"
            f"    source: {src.host}/bench/{corpus}\n"
            f"    targets: [{dst.host}/bench/{corpus}]\n"
            "    referrers: {enabled: false}\n"
        )
        for i in range(workers):
            args = ["worker", "-c", str(config), "--state", url, "--concurrency", "8"]
            started.append(Background([*args, "--name", f"w{i}"], work / f"{tag}-w{i}.log"))
        if workers:
            wait_for(lambda: registered(url) == workers, "the workers to register", 120)
        t0 = time.perf_counter()
        out = run_ocimirror("sync", "-c", str(config), "--state", url, timeout=1800)
        seconds = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"{tag}: sync failed:\n{out.stdout}\n{out.stderr}")
        wanted = sorted(t for t, _ in images)
        if dst.tags(f"bench/{corpus}") != wanted:
            raise SystemExit(f"{tag}: the destination's tags are not the source's")
        return seconds
    finally:
        for w in started:
            w.stop()
        dst.stop()


async def queue_cost(pg: str, n: int) -> dict[str, float]:
    """Seconds per task: deferring, running no-op jobs (1 and 8 at once), the ledger."""
    out: dict[str, float] = {}
    async with StateDB(new_database(pg)) as state:
        await ensure_schema(state)
        app = make_app(state, max_connections=10)

        @app.task(name="bench.noop")
        async def noop(**_: object) -> None:
            return None

        async with app.open_async():
            for concurrency in (1, 8):
                t0 = time.perf_counter()
                for i in range(n):
                    dest = f"127.0.0.1:1/bench/x:{concurrency}-{i}"
                    await app.configure_task(
                        "bench.noop", queue="ocimirror:bench", lock=dest, queueing_lock=dest
                    ).defer_async(destination=dest)
                out["defer"] = (time.perf_counter() - t0) / n
                t0 = time.perf_counter()
                await app.run_worker_async(
                    concurrency=concurrency, wait=False, install_signal_handlers=False
                )
                out[f"run, concurrency {concurrency}"] = (time.perf_counter() - t0) / n
        run_id = await state.start_run("bench", "cli")
        copies = [
            QueuedCopy("bench", "t/x", f"s/x:{i}", f"127.0.0.1:1/t/x:{i}", "new") for i in range(n)
        ]
        await ledger.queue_pass(state, run_id, "bench", copies, PlannerCounts())
        t0 = time.perf_counter()
        for c in copies:
            result = ImageResult(
                c.source_ref,
                c.dest_ref,
                source_digest="sha256:" + "a" * 64,
                destination_digest="sha256:" + "a" * 64,
            )
            await ledger.record_copy(state, c.dest_ref, result)
        out["ledger record_copy"] = (time.perf_counter() - t0) / n
        if await ledger.run_status(state, run_id) != "ok":
            raise SystemExit("the ledger did not close the bench run")
    return out


#: The limits of the `--throttled` rows: what the config says for the front.
LIMITS = {
    "set": ("`requests_per_second` set", "{{requests_per_second: {rate}}}"),
    "fixed": ("set, `adaptive: false`", "{{requests_per_second: {rate}, adaptive: false}}"),
    "learnt": ("learnt (adaptive)", ""),
}


async def throttled_pass(
    work: Path, pg: str, src: LocalRegistry, tags: int, workers: int, rate: float, limit: str
) -> str:
    """One cold pass of `tags` tiny images through a front allowing `rate` a second."""
    tag = f"throttled-{workers}-{limit}"
    title, setting = LIMITS[limit]
    dst = LocalRegistry(work / f"dst-{tag}", exact_counting=False).start()
    bucket = TokenBucket(rate)
    started: list[Background] = []
    try:
        async with Front(src, rate_limited(bucket)).running() as front:
            url = new_database(pg)
            config = work / f"{tag}.yaml"
            limits = f"  '{front.host}': {setting.format(rate=rate)}\n" if setting else ""
            config.write_text(
                "execution: workers\n" + (f"registries:\n{limits}" if limits else "") + "mirrors:\n"
                "  - name: tiny\n"
                f"    source: {front.host}/bench/tiny\n"
                f"    targets: [{dst.host}/bench/tiny]\n"
                "    referrers: {enabled: false}\n"
            )
            for i in range(workers):
                args = ["worker", "-c", str(config), "--state", url, "--concurrency", "8"]
                started.append(Background([*args, "--name", f"w{i}"], work / f"{tag}-w{i}.log"))
            await asyncio.to_thread(
                wait_for, lambda: registered(url) == workers, "the workers to register", 120
            )
            out = await asyncio.to_thread(
                run_ocimirror, "sync", "-c", str(config), "--state", url, timeout=1800
            )
        # A copy whose retries all met a 429 fails the pass: counted, not fatal.
        failed = tags - len(dst.tags("bench/tiny"))
        if out.returncode != 0 and not failed:
            raise SystemExit(f"{tag}: sync failed:\n{out.stdout}\n{out.stderr}")
    finally:
        for w in started:
            w.stop()
        dst.stop()
    span = (bucket.last or 0.0) - (bucket.first or 0.0)
    achieved = bucket.allowed / span if span > 0 else 0.0
    return (
        f"| {title} | {workers} |"
        f" {bucket.allowed} | {bucket.refused} | {bucket.refused_fraction:.1%} |"
        f" {achieved / rate:.2f} | {failed} |"
    )


async def throttled(
    work: Path, pg: str, tags: int, rate: float, counts: list[int], limits: list[str]
) -> None:
    src = LocalRegistry(work / "src-tiny", exact_counting=False).start()
    try:
        await seed_tiny(src, "bench/tiny", tags)
        print("| limit | workers | allowed | refused | refused % | achieved rate / R | failed |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for limit in limits:
            for n in counts:
                print(await throttled_pass(work, pg, src, tags, n, rate, limit), flush=True)
    finally:
        src.stop()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="small,multiarch")
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--throttled", type=int, default=0, metavar="TAGS")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--limits", default="set,learnt", help=f"of {','.join(LIMITS)}")
    args = parser.parse_args(None if argv is None else list(argv))
    work = Path(tempfile.mkdtemp(prefix="ocimirror-bench-workers-"))
    counts = [int(n) for n in args.workers.split(",")]
    try:
        with LocalPostgres() as pg:
            if args.throttled:
                limits = args.limits.split(",")
                asyncio.run(throttled(work, pg.url, args.throttled, args.rate, counts, limits))
                return
            src = LocalRegistry(work / "src", exact_counting=False).start()
            try:
                for corpus in args.corpus.split(","):
                    images = CORPORA[corpus]()
                    seed_sync(src, f"bench/{corpus}", images)
                    base = one_pass(work, pg.url, src, corpus, images, 0)
                    print(f"{corpus}: in-process {base:.2f} s (1.00)", flush=True)
                    for n in counts:
                        t = one_pass(work, pg.url, src, corpus, images, n)
                        print(
                            f"{corpus}: {n} worker(s) {t:.2f} s"
                            f" ({base / t:.2f}x the in-process speed)",
                            flush=True,
                        )
            finally:
                src.stop()
            costs = asyncio.run(queue_cost(pg.url, args.tasks))
            for what, seconds in costs.items():
                print(f"queue, per task: {what} {seconds * 1000:.2f} ms", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
