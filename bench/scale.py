"""Benchmark `ocimirror sync` at scale: 1,000 and 10,000 tags, SQLite and PostgreSQL (issue 17).

Run it as `.venv/bin/python bench/scale.py [--sizes 1000,10000] [--backends sqlite,postgresql]
[--cache DIR] [--json PATH] [--keep]`.

- **Corpus.** 200 repositories `scale/r000` .. `scale/r199` of 50 tags each (`v000` ..
  `v049`): 10,000 distinct images, each a one-line config of its own and two tiny layers
  it shares, one with every image (2 KiB), one with the tags of its repository (512 B).
  The 1,000-tag size mirrors the first 20 repositories. The corpus is pushed once into a
  source `LocalRegistry` whose storage is kept in `--cache` (default
  `bench/results/scale-cache`, git-ignored) and reused by later runs: a stamp file records
  every tag's digest when the push is complete.
- **Runs.** For each size and each state database backend: a fresh destination registry
  and a fresh state database (a SQLite file, or a new database on a throwaway PostgreSQL
  server from `ocimirror.testkit.postgres`), then `ocimirror sync -c FILE --state URL`
  twice: cold (everything copied) and warm (nothing to do: one tags list per repository and
  one manifest HEAD per tag at each registry). Each run is measured as in `bench/run.py`
  (`run_measured`: wall time and the tool's own peak RSS) with the requests both
  registries answered (their access logs) and the planning time (ocimirror's `mirror
  planned` log line: listing and HEADs, before any copy). After each run the destination
  is checked: every repository's tag list is exact and every tag has the source's digest.
- **Growth.** For each backend and phase, the 10,000-tag figure over the 1,000-tag one:
  10x is linear. The bars: peak RSS under 250 MiB in every run; time and requests growing
  no more than linearly (ratio at most 10, with 10% for noise on time); memory growing
  sub-linearly (ratio under 10).
- **Dashboard and status.** On the 10,000-tag state database of each backend, 1,000 runs
  (with their task results for one 50-tag repository each) are added to the runs the
  benchmark made; then `ocimirror status` is timed (the command; the same command on an
  empty state database beside it, its floor of start-up and imports; and its queries and
  table in-process, `sync.commands.status_rows`), and `ocimirror serve` is started on it to
  time `GET /` (the dashboard page) and `GET /api/v1/dashboard` (what the page polls),
  median of `--dashboard-rounds`. The bars: under 0.5 s for the page, the poll, status's
  queries and table, and the status command over its empty-database floor.

It always exits with status 0; read the tables and the `SUMMARY:` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from ocimirror.errors import OcimirrorError
from ocimirror.testkit.images import SampleImage, derive_seed, make_image, random_layer
from ocimirror.testkit.postgres import LocalPostgres
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import store_for
from ocimirror.testkit.skopeo import Skopeo
from run import OCIMIRROR, ROOT, ChildServer, RequestStats, run_measured, traffic_lines

REPOS = 200
TAGS_PER_REPO = 50
REPO_NAMES: tuple[str, ...] = tuple(f"scale/r{i:03d}" for i in range(REPOS))
TAG_NAMES: tuple[str, ...] = tuple(f"v{i:03d}" for i in range(TAGS_PER_REPO))
#: Bump when the corpus changes: a cache with another version is pushed again.
CORPUS_VERSION = 1
BASE_LAYER = random_layer(2048, seed=derive_seed("bench-scale", "base"))
REPO_LAYER_SIZE = 512
MIRROR = "scale"
SIZES = (1000, 10000)
BACKENDS = ("sqlite", "postgresql")
RSS_BAR_MIB = 250.0
#: Seconds the dashboard page, its poll and `status` (minus start-up) may take.
DASHBOARD_BAR = 0.5
#: Runs added to the big state database before the dashboard and `status` are timed.
EXTRA_RUNS = 1000
#: Noise allowed on a time ratio before "no worse than linear" fails.
TIME_SLACK = 1.1
DEFAULT_CACHE = ROOT / "bench" / "results" / "scale-cache"

PLANNED = re.compile(rb'^\{.*"event": "mirror planned".*\}$', re.MULTILINE)


# -- the corpus --------------------------------------------------------------------------


def images(repo: str) -> Iterator[tuple[str, SampleImage]]:
    """Yield the tagged images of `repo`: distinct configs, two shared tiny layers."""
    shared = random_layer(REPO_LAYER_SIZE, seed=derive_seed("bench-scale", repo))
    for tag in TAG_NAMES:
        yield (
            tag,
            make_image(
                layers=[],
                shared_layers=[BASE_LAYER, shared],
                config_extra={"ocimirror.bench": f"{repo}:{tag}"},
            ),
        )


async def _push(registry: LocalRegistry, concurrency: int) -> dict[str, dict[str, str]]:
    """Push every repository into `registry`, `concurrency` requests at a time."""
    store = store_for(registry)
    sem = asyncio.Semaphore(concurrency)
    digests: dict[str, dict[str, str]] = {}

    async def one_chunk(data: bytes) -> Any:
        yield data

    async def push_repo(repo: str) -> None:
        made = list(images(repo))
        # The two shared layers first (once each), then each image's config and manifest.
        for blob in made[0][1].blobs[1:]:
            async with sem:
                if await store.blob_size(repo, blob.digest) is None:
                    await store.put_blob(repo, blob.descriptor, one_chunk(blob.data))

        async def image(tag: str, img: SampleImage) -> None:
            async with sem:
                config = img.blobs[0]
                await store.put_blob(repo, config.descriptor, one_chunk(config.data))
                await store.put_manifest(repo, tag, img.manifest)

        await asyncio.gather(*(image(tag, img) for tag, img in made))
        digests[repo] = {tag: img.digest for tag, img in made}

    try:
        await asyncio.gather(*(push_repo(r) for r in REPO_NAMES))
    finally:
        await store.close()
    return digests


def source_registry(cache: Path) -> tuple[LocalRegistry, dict[str, dict[str, str]]]:
    """Start the source registry from the cache; push the corpus first if it is not there."""
    stamp = cache / "corpus.json"
    registry = LocalRegistry(cache / "src", exact_counting=False)
    registry.start()
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(stamp.read_text())
        if saved["version"] == CORPUS_VERSION:
            print(f"corpus: reusing {cache} ({REPOS * TAGS_PER_REPO} tags)", flush=True)
            return registry, saved["digests"]
    print(f"corpus: pushing {REPOS} repositories x {TAGS_PER_REPO} tags into {cache}", flush=True)
    start = time.perf_counter()
    digests = asyncio.run(_push(registry, 32))
    stamp.write_text(json.dumps({"version": CORPUS_VERSION, "digests": digests}))
    print(f"  pushed in {time.perf_counter() - start:.1f} s", flush=True)
    return registry, digests


# -- configs, state databases, checks ----------------------------------------------------


def write_config(path: Path, src: LocalRegistry, dst_host: str, repos: Sequence[str]) -> Path:
    """One mirror of `repos` to `<dst>/mirror`, JSON logs, on demand only (for serve).

    Referrers are off, as in bench/sync.py: this measures images alone.
    """
    mirror: dict[str, Any] = {
        "name": MIRROR,
        "source": [f"{src.host}/{repo}" for repo in repos],
        "targets": [f"{dst_host}/mirror"],
        "referrers": {"enabled": False},
        "schedule": 0,
    }
    doc = {"concurrency": 16, "logging": {"format": "json"}, "mirrors": [mirror]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def _create_database(server_url: str, name: str) -> str:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def state_url(backend: str, size: int, workdir: Path, pg: LocalPostgres | None) -> str:
    """A fresh, empty state database for one size on one backend."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'state-{size}.db'}"
    assert pg is not None
    return asyncio.run(_create_database(pg.url, f"scale_{size}"))


async def _check(dst: LocalRegistry, expected: dict[str, dict[str, str]]) -> list[str]:
    store = store_for(dst)
    sem = asyncio.Semaphore(32)
    problems: list[str] = []

    async def repo(name: str, tags: dict[str, str]) -> None:
        target = f"mirror/{name}"
        try:
            async with sem:
                listed = set(await store.list_tags(target))
        except OcimirrorError as e:
            problems.append(f"{target}: {e}")
            return
        if listed != set(tags):
            problems.append(f"{target}: tags differ ({len(listed)} listed, {len(tags)} expected)")

        async def head(tag: str, digest: str) -> None:
            async with sem:
                found = await store.head_manifest(target, tag)
            if found is None or found.digest != digest:
                problems.append(f"{target}:{tag}: {found.digest if found else 'missing'}")

        await asyncio.gather(*(head(t, d) for t, d in tags.items()))

    try:
        await asyncio.gather(*(repo(n, t) for n, t in expected.items()))
    finally:
        await store.close()
    return problems


def check_destination(dst: LocalRegistry, expected: dict[str, dict[str, str]]) -> list[str]:
    """What `dst` lacks or holds wrongly under `mirror/`: exact tag lists, every digest."""
    return asyncio.run(_check(dst, expected))


# -- runs --------------------------------------------------------------------------------


@dataclass
class ScaleRun:
    """One `ocimirror sync` of one size on one backend."""

    size: int
    backend: str
    phase: str
    exit_code: int
    seconds: float
    peak_rss_mib: float
    plan_seconds: float | None
    src: RequestStats
    dst: RequestStats
    problems: list[str]

    @property
    def ok(self) -> bool:
        """The command succeeded and the destination is right."""
        return self.exit_code == 0 and not self.problems

    @property
    def requests(self) -> int:
        """Requests at both registries."""
        return self.src.total + self.dst.total


def plan_seconds(log: Path) -> float | None:
    """The planning time from the `mirror planned` JSON log line, if any."""
    found = PLANNED.findall(log.read_bytes())
    return float(json.loads(found[-1])["seconds"]) if found else None


def sync_once(
    size: int,
    backend: str,
    phase: str,
    cmd: list[str],
    env: dict[str, str],
    src: LocalRegistry,
    dst: LocalRegistry,
    expected: dict[str, dict[str, str]],
    log: Path,
    timeout: float,
) -> ScaleRun:
    """Run one sync, count the requests, check the destination."""
    src_mark, dst_mark = src.mark(), dst.mark()
    code, seconds, rss = run_measured(cmd, env, log, timeout)
    src_stats = RequestStats.of(src.requests(since=src_mark))
    dst_stats = RequestStats.of(dst.requests(since=dst_mark))
    problems = check_destination(dst, expected)
    run = ScaleRun(
        size, backend, phase, code, seconds, rss, plan_seconds(log), src_stats, dst_stats, problems
    )
    plan = f"{run.plan_seconds:6.2f}" if run.plan_seconds is not None else "     ?"
    status = "ok" if run.ok else f"FAILED (exit {code}; {'; '.join(problems[:3])})"
    print(
        f"  {size:>6} {backend:<10} {phase:<4} {seconds:8.2f} s  plan {plan} s  "
        f"{rss:6.1f} MiB  req src {src_stats.total:6} dst {dst_stats.total:6}  {status}",
        flush=True,
    )
    if code != 0:
        print("    " + log.read_text("utf-8", "replace")[-1500:].replace("\n", "\n    "))
    return run


# -- the dashboard and status on the big database ----------------------------------------


async def _add_runs(url: str, count: int) -> None:
    """Record `count` finished runs (each with a repository's task results), in the past."""
    from sqlalchemy import insert, select

    from ocimirror.state.db import StateDB
    from ocimirror.state.schema import runs, task_results

    async with StateDB(url) as db, db.engine.begin() as conn:
        first = (await conn.execute(select(runs.c.started_at).order_by(runs.c.id))).scalar()
        end = first or datetime.now(UTC)
        rows = [
            {
                "mirror": MIRROR,
                "trigger": "schedule",
                "status": "ok" if i % 10 else "partial",
                "started_at": end - timedelta(hours=count - i),
                "finished_at": end - timedelta(hours=count - i) + timedelta(seconds=30 + i % 7),
                "copied": i % 3,
                "unchanged": 9997,
                "bytes": 1024 * (i % 50),
                "error": None if i % 10 else "1 failed",
            }
            for i in range(count)
        ]
        await conn.execute(insert(runs), rows)
        ids = (await conn.execute(select(runs.c.id).order_by(runs.c.id.desc()).limit(count))).all()
        results = [
            {
                "run_id": run_id,
                "mirror": MIRROR,
                "target": f"dst/mirror/{REPO_NAMES[n % REPOS]}",
                "source_ref": f"src/{REPO_NAMES[n % REPOS]}:{tag}",
                "dest_ref": f"dst/mirror/{REPO_NAMES[n % REPOS]}:{tag}",
                "reason": "unchanged",
                "status": "unchanged",
                "source_digest": "sha256:" + "0" * 64,
                "target_digest": "sha256:" + "0" * 64,
                "finished_at": end,
            }
            for n, (run_id,) in enumerate(ids)
            for tag in TAG_NAMES
        ]
        for start in range(0, len(results), 5000):
            await conn.execute(insert(task_results), results[start : start + 5000])


async def _status_in_process(config: Path, url: str) -> float:
    """Seconds `status` spends on the state database and its table, in this process."""
    from ocimirror.settings.loading import load_config
    from ocimirror.state.db import StateDB
    from ocimirror.sync.commands import status_rows

    cfg = load_config(config).config
    async with StateDB(url) as db:
        start = time.perf_counter()
        await status_rows(cfg, db, datetime.now(UTC))
        return time.perf_counter() - start


def _get(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")
    return time.perf_counter() - start


@dataclass
class Timing:
    """Best and median of some rounds, seconds."""

    best: float
    median: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Timing:
        """From the rounds."""
        return cls(min(values), statistics.median(values))


@dataclass
class Views:
    """The dashboard and `status` timed on one backend's big state database."""

    backend: str
    runs: int
    tags: int
    page: Timing
    poll: Timing
    status_command: Timing
    status_queries: Timing
    #: `ocimirror status` of the same config on an empty state database: its floor.
    status_empty: Timing


def time_views(
    backend: str,
    size: int,
    config: Path,
    url: str,
    env: dict[str, str],
    workdir: Path,
    rounds: int,
) -> Views:
    """Add the runs, then time `status` and the dashboard on the state database."""
    asyncio.run(_add_runs(url, EXTRA_RUNS))
    log = workdir / f"views-{backend}.log"
    empty = f"sqlite:///{workdir / f'empty-{backend}.db'}"
    status_s, empty_s, queries_s = [], [], []
    for _ in range(rounds):
        for into, state in ((status_s, url), (empty_s, empty)):
            cmd = [str(OCIMIRROR), "status", "-c", str(config), "--state", state]
            code, seconds, _rss = run_measured(cmd, env, log, 120)
            if code != 0:
                raise RuntimeError(f"ocimirror status: exit {code}: {log.read_text()[-1000:]}")
            into.append(seconds)
        queries_s.append(asyncio.run(_status_in_process(config, url)))
    port = free_port()
    serve = ChildServer(
        [str(OCIMIRROR), "serve", "-c", str(config), "--port", str(port), "--state", url],
        {k: v for k, v in env.items() if k != "OCIMIRROR_API_TOKENS"},
        workdir / f"serve-{backend}.log",
        port,
    )
    serve.health_path = "/readyz"
    serve.start()
    try:
        _get(f"http://{serve.host}/")  # the first render reads the page's assets
        page = [_get(f"http://{serve.host}/") for _ in range(rounds)]
        poll = [_get(f"http://{serve.host}/api/v1/dashboard") for _ in range(rounds)]
    finally:
        serve.stop()
    views = Views(
        backend,
        asyncio.run(_count_runs(url)),
        size,
        Timing.of(page),
        Timing.of(poll),
        Timing.of(status_s),
        Timing.of(queries_s),
        Timing.of(empty_s),
    )
    print(
        f"  {backend:<10} {views.runs} runs, {views.tags} tags: page {views.page.median:.3f} s,"
        f" poll {views.poll.median:.3f} s, status {views.status_command.median:.2f} s"
        f" (on an empty database {views.status_empty.median:.2f} s;"
        f" its queries and table in-process {views.status_queries.median:.3f} s)",
        flush=True,
    )
    return views


async def _count_runs(url: str) -> int:
    from sqlalchemy import func, select

    from ocimirror.state.db import StateDB
    from ocimirror.state.schema import runs

    async with StateDB(url) as db, db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(runs))).scalar() or 0)


# -- judging and output ------------------------------------------------------------------


@dataclass
class Bar:
    """One bar and its verdict."""

    name: str
    value: str
    passed: bool


def growth(runs: Sequence[ScaleRun], backend: str, phase: str) -> dict[str, float] | None:
    """The 10,000-tag figures over the 1,000-tag ones for one backend and phase."""
    by_size = {r.size: r for r in runs if r.backend == backend and r.phase == phase}
    small, big = by_size.get(min(SIZES)), by_size.get(max(SIZES))
    if small is None or big is None:
        return None
    out = {
        "seconds": big.seconds / small.seconds,
        "requests": big.requests / small.requests,
        "rss": big.peak_rss_mib / small.peak_rss_mib,
    }
    if big.plan_seconds and small.plan_seconds:
        out["plan"] = big.plan_seconds / small.plan_seconds
    return out


def judge(runs: Sequence[ScaleRun], views: Sequence[Views]) -> list[Bar]:
    """The bars of issue 17's "Scale" section."""
    linear = max(SIZES) / min(SIZES)
    bars = [
        Bar(
            f"{r.size} {r.backend} {r.phase}: correct, peak RSS < {RSS_BAR_MIB:g} MiB",
            f"{'ok' if r.ok else 'WRONG'}, {r.peak_rss_mib:.1f} MiB",
            r.ok and r.peak_rss_mib < RSS_BAR_MIB,
        )
        for r in runs
    ]
    for backend in BACKENDS:
        for phase in ("cold", "warm"):
            g = growth(runs, backend, phase)
            if g is None:
                continue
            bars += [
                Bar(
                    f"{backend} {phase}: time growth <= {linear:g}x",
                    f"{g['seconds']:.2f}x",
                    g["seconds"] <= linear * TIME_SLACK,
                ),
                Bar(
                    f"{backend} {phase}: requests growth <= {linear:g}x",
                    f"{g['requests']:.2f}x",
                    g["requests"] <= linear,
                ),
                Bar(
                    f"{backend} {phase}: memory growth < {linear:g}x",
                    f"{g['rss']:.2f}x",
                    g["rss"] < linear,
                ),
            ]
    for v in views:
        bars += [
            Bar(
                f"{v.backend}: dashboard page < {DASHBOARD_BAR} s",
                f"{v.page.median:.3f} s",
                v.page.median < DASHBOARD_BAR,
            ),
            Bar(
                f"{v.backend}: dashboard poll < {DASHBOARD_BAR} s",
                f"{v.poll.median:.3f} s",
                v.poll.median < DASHBOARD_BAR,
            ),
            Bar(
                f"{v.backend}: status, its queries and table < {DASHBOARD_BAR} s",
                f"{v.status_queries.median:.3f} s",
                v.status_queries.median < DASHBOARD_BAR,
            ),
            Bar(
                f"{v.backend}: status command minus the same on an empty database"
                f" < {DASHBOARD_BAR} s",
                f"{v.status_command.median - v.status_empty.median:.3f} s",
                v.status_command.median - v.status_empty.median < DASHBOARD_BAR,
            ),
        ]
    return bars


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), "-+-".join("-" * w for w in widths), *map(line, rows)])


def report(runs: Sequence[ScaleRun], views: Sequence[Views], json_path: Path | None) -> None:
    """Print the tables and the bars; save the raw results."""
    print()
    print(
        render(
            ["tags, backend, phase", "seconds", "plan s", "peak RSS MiB", "requests src/dst"],
            [
                [
                    f"{r.size} {r.backend} {r.phase}",
                    f"{r.seconds:.2f}",
                    f"{r.plan_seconds:.2f}" if r.plan_seconds is not None else "?",
                    f"{r.peak_rss_mib:.1f}",
                    f"{r.src.total}/{r.dst.total}",
                ]
                for r in runs
            ],
        )
    )
    print()
    rows = []
    for backend in BACKENDS:
        for phase in ("cold", "warm"):
            g = growth(runs, backend, phase)
            if g is not None:
                rows.append(
                    [
                        f"{backend} {phase}",
                        f"{g['seconds']:.2f}x",
                        f"{g['plan']:.2f}x" if "plan" in g else "?",
                        f"{g['rss']:.2f}x",
                        f"{g['requests']:.2f}x",
                    ]
                )
    if rows:
        print(f"growth from {min(SIZES)} to {max(SIZES)} tags ({max(SIZES) // min(SIZES)}x):")
        print(render(["backend, phase", "time", "plan", "peak RSS", "requests"], rows))
        print()
    if views:
        print(
            render(
                [
                    "big state database",
                    "runs",
                    "tags",
                    "page s",
                    "poll s",
                    "status s",
                    "status on empty s",
                    "status queries s",
                ],
                [
                    [
                        v.backend,
                        str(v.runs),
                        str(v.tags),
                        f"{v.page.median:.3f}",
                        f"{v.poll.median:.3f}",
                        f"{v.status_command.median:.2f}",
                        f"{v.status_empty.median:.2f}",
                        f"{v.status_queries.median:.3f}",
                    ]
                    for v in views
                ],
            )
        )
        print()
    print("requests by method and kind:")
    for r in runs:
        print(f"{r.size} {r.backend} {r.phase}:")
        print("\n".join(traffic_lines(r.src, r.dst)))
    print()
    bars = judge(runs, views)
    print(
        render(
            ["bar", "value", "result"],
            [[b.name, b.value, "PASS" if b.passed else "FAIL"] for b in bars],
        )
    )
    failed = [b for b in bars if not b.passed]
    for b in failed:
        print(f"FAIL {b.name}: {b.value}")
    print(
        f"SUMMARY: {len(bars) - len(failed)}/{len(bars)} bars PASS"
        + (f", {len(failed)} FAIL" if failed else " - all bars met")
    )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        raw = {
            "runs": [asdict(r) for r in runs],
            "views": [asdict(v) for v in views],
            "bars": [asdict(b) for b in bars],
        }
        json_path.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"raw results written to {json_path}")


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="tag counts, multiples of 50 up to 10000 (default: %(default)s)",
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="state databases (default: %(default)s)"
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where the corpus is kept"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="save raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-views", action="store_true", help="skip the dashboard and status")
    parser.add_argument("--dashboard-rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per sync")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",")})
    except ValueError:
        parser.error(f"--sizes: not a list of numbers: {args.sizes!r}")
    if any(s % TAGS_PER_REPO or not 0 < s <= REPOS * TAGS_PER_REPO for s in args.sizes):
        parser.error(f"--sizes: each a multiple of {TAGS_PER_REPO} up to {REPOS * TAGS_PER_REPO}")
    args.backends = [b for b in args.backends.split(",") if b]
    if not set(args.backends) <= set(BACKENDS):
        parser.error(f"--backends: {', '.join(BACKENDS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every size on every backend, then the views; print the report."""
    global SIZES
    args = parse_args(argv)
    SIZES = tuple(args.sizes)
    args.cache.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ocimirror-bench-scale-"))
    env = Skopeo(workdir / "home").env()
    runs: list[ScaleRun] = []
    views: list[Views] = []
    pg: LocalPostgres | None = None
    src: LocalRegistry | None = None
    started = time.perf_counter()
    try:
        src, digests = source_registry(args.cache)
        if "postgresql" in args.backends:
            pg = LocalPostgres().start()
        print("tags   backend    phase   seconds       planning      peak RSS   requests")
        for backend in args.backends:
            for size in args.sizes:
                repos = REPO_NAMES[: size // TAGS_PER_REPO]
                expected = {r: digests[r] for r in repos}
                dst = LocalRegistry(workdir / f"dst-{backend}-{size}", exact_counting=False)
                dst.start()
                try:
                    config = write_config(workdir / f"{backend}-{size}.yml", src, dst.host, repos)
                    url = state_url(backend, size, workdir, pg)
                    cmd = [str(OCIMIRROR), "sync", "-c", str(config), "--state", url]
                    for phase in ("cold", "warm"):
                        log = workdir / f"{backend}-{size}-{phase}.log"
                        runs.append(
                            sync_once(
                                size, backend, phase, cmd, env, src, dst, expected, log,
                                args.timeout,
                            )
                        )  # fmt: skip
                    if size == max(args.sizes) and not args.no_views:
                        try:
                            views.append(
                                time_views(
                                    backend, size, config, url, env, workdir, args.dashboard_rounds
                                )
                            )
                        except (RuntimeError, OSError) as e:
                            print(f"  {backend}: the views could not be timed: {e}", flush=True)
                finally:
                    dst.stop()
                    if not args.keep:
                        shutil.rmtree(dst.directory, ignore_errors=True)
    finally:
        if pg is not None:
            pg.stop()
        if src is not None:
            src.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"took {time.perf_counter() - started:.0f} s; load average {os.getloadavg()}")
    report(runs, views, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
