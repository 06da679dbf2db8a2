"""Benchmark a warm `ocimirror sync` pass against `skopeo sync --all` (issue 5).

Run it as `.venv/bin/python bench/sync.py [--rounds N] [--json PATH] [--keep]`. A source
registry is seeded with 20 repositories (`bench/r00` .. `bench/r19`) of 25 tags each, 500
small distinct images. Each tool mirrors all of them into its own destination registry
once (cold), so that everything is already there; then warm passes with nothing to do are
measured, `--rounds` times each (default 3), the order of the tools alternating from one
round to the next, and the median is reported:

- `ocimirror sync -c bench.yml`: one mirror whose source is the list of 20 repositories
  and whose target is the prefix `<dst>/mirror` (so `<dst>/mirror/bench/r00`...), with
  the state database beside the config;
- the same config with `immutable_tags: ["*"]`, into the same destination but with its
  own state database: one unmeasured pass records the tags, then the measured ones;
- the same config with `trust_state: true` (issue 17), likewise into the same destination
  with its own state database: one unmeasured pass (a full check, every target HEADed)
  records the tags, then the measured ones skip the target HEADs;
- `skopeo sync --all --src yaml --dest docker` with the 20 repositories (all tags) in
  skopeo's YAML source format, to `<dst>/mirror/bench` (skopeo appends the last part of
  each repository name, which gives the same names as ocimirror).

Those are one-shot commands: each pays Python's start-up and imports (about a second)
before its pass. The scheduled mirror is a resident process (`ocimirror run -c FILE`, or
`ocimirror serve -c FILE`, which runs the same daemon in-process), for which a warm pass
costs only the pass. So the resident form is measured too, beside the one-shot rows:

- `ocimirror serve -c resident.yml --port P --state sqlite:///...`: the same mirror with
  `schedule: 0` (on demand), into a destination registry of its own, started once; a
  cold fill, then `--rounds` warm passes one after another, each triggered with
  `POST /api/v1/mirrors/bench/sync` and awaited by polling `GET /api/v1/mirrors` (every
  `--poll` seconds, default 0.01) until the mirror is no longer running and shows a newer
  `last_run` with a final status. A pass's time is its run in the state database (`finished_at -
  started_at`); the wall time from the POST to the finished run being seen, the requests
  at both registries during the pass and the serve process's peak RSS (`VmHWM`) are
  reported too;
- the same with `immutable_tags: ["*"]`, and the same with `trust_state: true`, each in
  a serve process and state database of its own, into the same destination: one
  unmeasured pass records the tags, then the measured ones.

Last, the floor of the trusting pass: its 540 requests (the source's tags lists and
manifest HEADs, the target's tags lists) sent by a bare aiohttp client (`bench/floor.py`)
against the same registries, `--rounds` times at 8, 16, 32 and 64 in flight; the best
median is the floor, printed with the resident trusting pass over it and skopeo over it
(the highest ratio to skopeo any client sending these requests reaches on the machine).

Wall time, peak RSS and the requests both registries answered are measured as in
`bench/run.py` (whose helpers this reuses); after every run the destination is checked
against the source (every tag with its digest, every manifest and blob). The bars of the
issue are judged for the four ocimirror variants: writes and manifest GETs at either
registry and requests per tag in the worst of the runs, the speed as skopeo's median time
over ocimirror's (its median wall time for the one-shot command, its median pass time for
the resident one); for the `trust_state` variants, issue 17's bars instead:
at most 1.05 requests per tag besides one target tags list per repository, and skopeo at
least 4x slower than the one-shot command and 8x slower than the resident pass. They are printed as a table; the exit status is 0 even when a bar
fails, since this is a report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from floor import Floor, floor_lines, measure_floor
from ocimirror.testkit.images import SampleImage, derive_seed, make_image, random_layer
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import seed_sync
from ocimirror.testkit.skopeo import Skopeo
from run import (
    OCIMIRROR,
    ChildServer,
    Expected,
    RequestStats,
    describe_machine,
    run_measured,
    traffic_lines,
    verify,
)

if TYPE_CHECKING:
    from ocimirror.state.db import RunInfo

REPOS = 20
TAGS_PER_REPO = 25
TOTAL_TAGS = REPOS * TAGS_PER_REPO
#: Source repositories; each lands at `<dst>/mirror/<repo>` with both tools.
REPO_NAMES: tuple[str, ...] = tuple(f"bench/r{i:02d}" for i in range(REPOS))
TAG_NAMES: tuple[str, ...] = tuple(f"1.{i}.0" for i in range(TAGS_PER_REPO))
#: Every image: a base layer shared by the tags of its repository, and one of its own.
BASE_LAYER_SIZE = 4096
OWN_LAYER_SIZE = 1024

#: The one-shot runs: (name, label). The order of a round is this one or its reverse.
VARIANTS: tuple[tuple[str, str], ...] = (
    ("ocimirror", "ocimirror sync (one-shot) warm"),
    ("ocimirror-immutable", "ocimirror sync (one-shot) warm (immutable tags)"),
    ("ocimirror-trust", "ocimirror sync (one-shot) warm (trust_state)"),
    ("skopeo", "skopeo sync warm"),
)
#: The resident runs: one `ocimirror serve` each, its passes triggered over its API.
RESIDENT_VARIANTS: tuple[tuple[str, str], ...] = (
    ("resident", "ocimirror run/serve (resident) warm pass"),
    ("resident-immutable", "ocimirror run/serve (resident) warm pass (immutable tags)"),
    ("resident-trust", "ocimirror run/serve (resident) warm pass (trust_state)"),
)
LABELS: dict[str, str] = dict((*VARIANTS, *RESIDENT_VARIANTS))
#: The one-shot ocimirror variants (start-up is taken off their time in the table).
ONE_SHOT: frozenset[str] = frozenset({"ocimirror", "ocimirror-immutable", "ocimirror-trust"})
#: The ocimirror variants the bars are judged for, with their column in the bars table.
JUDGED: dict[str, str] = {
    "ocimirror": "one-shot",
    "ocimirror-immutable": "one-shot, immutable",
    "resident": "resident",
    "resident-immutable": "resident, immutable",
    "ocimirror-trust": "one-shot, trust_state",
    "resident-trust": "resident, trust_state",
}
#: The mirror's name in the config, the API and the state database.
MIRROR = "bench"

#: ocimirror's closing line per mirror, "ok bench: ... (0.0 MiB in 1.8 s)": the pass itself.
PASS_TIME = re.compile(r"^\S+ bench: .*\(.* in ([0-9.]+) s\)\s*$", re.MULTILINE)

#: The bars of issue 5 for a warm pass with nothing to do.
REQUESTS_PER_TAG_BAR = 2.2
SPEED_BAR = 5.0
#: The bars of issue 17 for `trust_state`: requests per mutable tag on top of one target
#: tags list per repository, and skopeo's time over ocimirror's, one-shot and resident.
TRUST_VARIANTS: frozenset[str] = frozenset({"ocimirror-trust", "resident-trust"})
TRUST_REQUESTS_PER_TAG_BAR = 1.05
TRUST_SPEED_BAR = {"ocimirror-trust": 4.0, "resident-trust": 8.0}


# -- the corpus --------------------------------------------------------------------------


def images(repo: str) -> Iterator[tuple[str, SampleImage]]:
    """Yield the 25 tagged images of `repo`, each distinct, sharing a base layer."""
    base = random_layer(BASE_LAYER_SIZE, seed=derive_seed("bench-sync", repo, "base"))
    for tag in TAG_NAMES:
        yield (
            tag,
            make_image(
                layers=1,
                layer_size=OWN_LAYER_SIZE,
                seed=derive_seed("bench-sync", repo, tag),
                shared_layers=[base],
            ),
        )


def seed_source(src: LocalRegistry) -> dict[str, Expected]:
    """Push every repository into `src`; return what each holds."""
    expected: dict[str, Expected] = {}
    for repo in REPO_NAMES:
        expected[repo] = Expected()
        seed_sync(src, repo, expected[repo].record(images(repo)))
    return expected


# -- configs and commands ----------------------------------------------------------------


def ocimirror_config(
    path: Path,
    src: LocalRegistry,
    dst: LocalRegistry,
    *,
    immutable: bool,
    schedule: int | str | None = None,
    trust: bool = False,
) -> Path:
    """Write an ocimirror config mirroring every repository to `<dst>/mirror`.

    `schedule` is the mirror's (`0`: on demand only, for the resident daemon). Referrers
    are off: skopeo sync copies none, and the bars of issue 5 are for images alone
    (bench/referrers.py reports what referrers add).
    """
    mirror: dict[str, Any] = {
        "name": MIRROR,
        "source": [f"{src.host}/{repo}" for repo in REPO_NAMES],
        "targets": [f"{dst.host}/mirror"],
        "referrers": {"enabled": False},
    }
    if immutable:
        mirror["immutable_tags"] = ["*"]
    if trust:
        mirror["trust_state"] = True
    if schedule is not None:
        mirror["schedule"] = schedule
    path.write_text(yaml.safe_dump({"concurrency": 16, "mirrors": [mirror]}, sort_keys=False))
    return path


def skopeo_source(path: Path, src: LocalRegistry) -> Path:
    """Write skopeo's YAML source file: every repository of `src`, all tags."""
    doc = {src.host: {"tls-verify": False, "images": {repo: [] for repo in REPO_NAMES}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def commands(
    workdir: Path, skopeo: Skopeo, src: LocalRegistry, dsts: dict[str, LocalRegistry]
) -> dict[str, list[str]]:
    """Write the configs; return the command of each variant."""
    plain = ocimirror_config(workdir / "bench.yml", src, dsts["ocimirror"], immutable=False)
    immutable = ocimirror_config(
        workdir / "bench-immutable.yml", src, dsts["ocimirror-immutable"], immutable=True
    )
    trusting = ocimirror_config(
        workdir / "bench-trust.yml", src, dsts["ocimirror-trust"], immutable=False, trust=True
    )
    source = skopeo_source(workdir / "skopeo-source.yml", src)
    return {
        "ocimirror": [str(OCIMIRROR), "sync", "-c", str(plain)],
        "ocimirror-immutable": [str(OCIMIRROR), "sync", "-c", str(immutable)],
        "ocimirror-trust": [str(OCIMIRROR), "sync", "-c", str(trusting)],
        "skopeo": skopeo.command(
            "sync",
            "--all",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
            str(source),
            f"{dsts['skopeo'].host}/mirror/bench",
        ),
    }


# -- runs --------------------------------------------------------------------------------


@dataclass
class SyncRun:
    """One pass of one variant over the 500 tags."""

    variant: str
    phase: str
    command: list[str]
    exit_code: int
    seconds: float
    peak_rss_mib: float
    src: RequestStats
    dst: RequestStats
    problems: list[str]
    log_tail: str
    #: ocimirror's own timing of the pass (no start-up): from its summary line for the
    #: one-shot command, from the run in the state database for the resident one.
    pass_seconds: float | None = None
    #: Resident only: from the POST that triggered the pass to its end seen over the API.
    wall_seconds: float | None = None
    #: Resident only: `GET /api/v1/mirrors` requests sent while waiting for the pass.
    polls: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the tool succeeded and the destination holds every tag and blob."""
        return self.exit_code == 0 and not self.problems

    @property
    def requests(self) -> int:
        """Requests at both registries together."""
        return self.src.total + self.dst.total

    @property
    def per_tag(self) -> float:
        """Requests at both registries per source tag."""
        return self.requests / TOTAL_TAGS

    @property
    def writes(self) -> int:
        """PUT, POST and PATCH requests at either registry."""
        return self.src.writes + self.dst.writes

    @property
    def manifest_gets(self) -> int:
        """Manifest GETs at either registry."""
        return self.src.manifest_gets + self.dst.manifest_gets


def check_destination(dst: LocalRegistry, expected: dict[str, Expected]) -> list[str]:
    """Return what `dst` lacks or holds wrongly under `mirror/`, per repository."""
    return [
        f"mirror/{repo}: {problem}"
        for repo, exp in expected.items()
        for problem in verify(dst, f"mirror/{repo}", exp)
    ]


def measure(
    variant: str,
    phase: str,
    cmd: list[str],
    env: dict[str, str],
    src: LocalRegistry,
    dst: LocalRegistry,
    expected: dict[str, Expected],
    log: Path,
    timeout: float,
) -> SyncRun:
    """Run `cmd` once, count both registries' requests, then check the destination."""
    src_mark, dst_mark = src.mark(), dst.mark()
    code, seconds, rss = run_measured(cmd, env, log, timeout)
    src_stats = RequestStats.of(src.requests(since=src_mark))
    dst_stats = RequestStats.of(dst.requests(since=dst_mark))
    problems = check_destination(dst, expected)
    tail = log.read_text("utf-8", "replace")[-2000:]
    found = PASS_TIME.findall(tail) if variant.startswith("ocimirror") else []
    pass_seconds = float(found[-1]) if found else None
    run = SyncRun(
        variant, phase, cmd, code, seconds, rss, src_stats, dst_stats, problems, tail, pass_seconds
    )
    status = "ok" if run.ok else f"FAILED (exit {code}; {'; '.join(problems[:3])})"
    print(
        f"  {phase:<7} {variant:<19} {seconds:7.2f} s {rss:6.1f} MiB  "
        f"req src {src_stats.total:4} dst {dst_stats.total:4} ({run.per_tag:.2f}/tag)  {status}",
        flush=True,
    )
    if code != 0:
        print("    " + tail.strip().replace("\n", "\n    ")[-1500:], flush=True)
    return run


# -- the resident form -------------------------------------------------------------------


def memory_mib(pid: int) -> dict[str, float]:
    """Return `VmHWM` (peak RSS) and `VmRSS` of process `pid` in MiB, from /proc.

    Unlike `ru_maxrss`, the high-water mark belongs to the address space, which `exec`
    replaces: a child of this process does not inherit this process's peak.
    """
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024  # kB
    return out


@dataclass
class PassSeen:
    """The end of a pass triggered over the API, as `GET /api/v1/mirrors` showed it."""

    view: dict[str, Any]
    wall_seconds: float
    polls: int


class ServeProcess(ChildServer):
    """`ocimirror serve -c FILE` on a loopback port: started once, passes triggered over HTTP.

    No API token is configured, so it listens on 127.0.0.1 only and needs none. It runs in
    a session of its own (so `_kill_running_tools` finds it if this script dies); `stop()`
    sends SIGTERM and waits for a clean exit.
    """

    health_path = "/readyz"
    what = "ocimirror serve"

    def __init__(self, config: Path, state_url: str, env: dict[str, str], log: Path) -> None:
        """Prepare the command; nothing runs until `start()`."""
        port = free_port()
        command = [
            str(OCIMIRROR), "serve", "-c", str(config), "--port", str(port),
            "--state", state_url,
        ]  # fmt: skip
        env = {k: v for k, v in env.items() if k != "OCIMIRROR_API_TOKENS"}
        super().__init__(command, env, log, port)
        self.state_url = state_url
        self._conn: http.client.HTTPConnection | None = None

    def __str__(self) -> str:
        """The log's tail, for error messages."""
        return self.tail(1500)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request on a kept-alive connection (reconnecting once); return it.

        A body goes as application/json (the only type the API's writes take).
        """
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def mirror(self) -> dict[str, Any]:
        """The bench mirror as `GET /api/v1/mirrors` shows it."""
        status, body = self.request("GET", "/api/v1/mirrors")
        if status != 200:
            raise RuntimeError(f"GET /api/v1/mirrors: {status} {body[:200]!r}")
        views: list[dict[str, Any]] = json.loads(body)["mirrors"]
        return next(v for v in views if v["name"] == MIRROR)

    def sync(self, timeout: float, poll: float) -> PassSeen:
        """Trigger a pass of the mirror and wait until it is seen finished.

        Finished: not running, a `last_run` other than the one before the POST, and a
        final `last_status` (`ok`, or `partial`, `failed`...). The status must be checked
        too: `GET /api/v1/mirrors` reads the last run from the state database before it
        looks at the daemon's running passes, so a poll that lands as the pass ends can
        show `running: false` with the run still `running` and its start as `last_run`.
        The wall time runs from just before the POST to the poll that saw the end; it
        includes up to one `poll` interval and the polls' own cost.
        """
        before = self.mirror().get("last_run")
        start = time.perf_counter()
        status, body = self.request("POST", f"/api/v1/mirrors/{MIRROR}/sync", b"{}")
        if status != 202:
            raise RuntimeError(f"POST .../{MIRROR}/sync: {status} {body[:200]!r}")
        polls = 0
        while True:
            view = self.mirror()
            polls += 1
            if (
                not view["running"]
                and view.get("last_run") != before
                and view.get("last_status") not in (None, "running")
            ):
                return PassSeen(view, time.perf_counter() - start, polls)
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"pass not finished after {timeout:g} s: {view}")
            time.sleep(poll)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Close the kept-alive connection, then stop the process."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return super().stop(timeout)


async def _latest_runs(url: str, limit: int) -> list[RunInfo]:
    """The mirror's latest runs in the state database, newest first (`RunInfo`)."""
    from ocimirror.state.db import StateDB  # SQLAlchemy: only when the resident runs

    async with StateDB(url) as state:
        return list(await state.runs(MIRROR, limit=limit))


def latest_run(url: str) -> RunInfo | None:
    """The mirror's latest run in the state database (`RunInfo`), or None."""
    found = asyncio.run(_latest_runs(url, 1))
    return found[0] if found else None


def measure_pass(
    variant: str,
    phase: str,
    serve: ServeProcess,
    src: LocalRegistry,
    dst: LocalRegistry,
    expected: dict[str, Expected],
    timeout: float,
    poll: float,
) -> SyncRun:
    """Trigger one pass of a resident mirror; time it, count the requests, check `dst`.

    Its time is that of its run in the state database, `finished_at - started_at`: from
    the run being opened (after the known tags are read) to its results being recorded.
    """
    previous = latest_run(serve.state_url)
    src_mark, dst_mark = src.mark(), dst.mark()
    problems: list[str] = []
    try:
        seen: PassSeen | None = serve.sync(timeout, poll)
    except (RuntimeError, OSError, http.client.HTTPException) as e:
        seen = None
        problems.append(str(e))
    src_stats = RequestStats.of(src.requests(since=src_mark))
    dst_stats = RequestStats.of(dst.requests(since=dst_mark))
    info = latest_run(serve.state_url)
    pass_seconds = None
    if info is None or (previous is not None and info.id == previous.id):
        problems.append("no new run in the state database")
    elif info.finished_at is None:
        problems.append(f"run {info.id} not finished in the state database")
    else:
        pass_seconds = (info.finished_at - info.started_at).total_seconds()
        if info.status != "ok" or info.trigger != "api":
            problems.append(f"run {info.id}: status {info.status}, trigger {info.trigger}")
    if seen is not None and seen.view.get("last_status") != "ok":
        problems.append(
            f"last_status {seen.view.get('last_status')}: {seen.view.get('last_error')}"
        )
    problems += check_destination(dst, expected)
    rss = memory_mib(serve.pid).get("VmHWM", 0.0)
    run = SyncRun(
        variant=variant,
        phase=phase,
        command=[*serve.command, "+", "POST", f"/api/v1/mirrors/{MIRROR}/sync"],
        exit_code=0 if seen is not None and pass_seconds is not None else 1,
        seconds=pass_seconds if pass_seconds is not None else timeout,
        peak_rss_mib=rss,
        src=src_stats,
        dst=dst_stats,
        problems=problems,
        log_tail=serve.tail(2000),
        pass_seconds=pass_seconds,
        wall_seconds=seen.wall_seconds if seen is not None else None,
        polls=seen.polls if seen is not None else None,
    )
    status = "ok" if run.ok else f"FAILED ({'; '.join(problems[:3])})"
    wall = f"{run.wall_seconds:.3f}" if run.wall_seconds is not None else "-"
    print(
        f"  {phase:<7} {variant:<19} {run.seconds:7.3f} s pass, {wall} s POST to done "
        f"({run.polls} polls), VmHWM {rss:6.1f} MiB  req src {src_stats.total:4} "
        f"dst {dst_stats.total:4} ({run.per_tag:.2f}/tag)  {status}",
        flush=True,
    )
    return run


def run_resident(
    variant: str,
    first_phase: str,
    config: Path,
    workdir: Path,
    env: dict[str, str],
    src: LocalRegistry,
    dst: LocalRegistry,
    expected: dict[str, Expected],
    args: argparse.Namespace,
) -> tuple[list[SyncRun], dict[str, float | None]]:
    """Start `ocimirror serve` once; one unmeasured pass, then `args.rounds` warm passes.

    Return the passes and what the process did as a whole: seconds until ready, peak and
    current RSS after the passes, exit code after SIGTERM (None if it had to be killed).
    """
    state_url = f"sqlite:///{workdir / f'{variant}.state.db'}"
    serve = ServeProcess(config, state_url, env, workdir / f"{variant}-serve.log")
    runs: list[SyncRun] = []
    process: dict[str, float | None] = {}
    try:
        process["ready_seconds"] = serve.start()
        print(
            f"  {variant}: ocimirror serve pid {serve.pid} on 127.0.0.1:{serve.port}, "
            f"ready in {process['ready_seconds']:.2f} s",
            flush=True,
        )
        for phase in [first_phase, *(f"warm-{i + 1}" for i in range(args.rounds))]:
            runs.append(
                measure_pass(variant, phase, serve, src, dst, expected, args.timeout, args.poll)
            )
        memory = memory_mib(serve.pid)
        process["vm_hwm_mib"] = memory.get("VmHWM")
        process["vm_rss_mib"] = memory.get("VmRSS")
    finally:
        code = serve.stop()
        process["exit_code"] = code
    print(
        f"  {variant}: VmHWM {process.get('vm_hwm_mib') or 0:.1f} MiB, VmRSS "
        f"{process.get('vm_rss_mib') or 0:.1f} MiB after the passes; SIGTERM: exit {code}",
        flush=True,
    )
    if code != 0 and runs:
        runs[-1].problems.append(f"ocimirror serve exited with {code} on SIGTERM")
    return runs, process


# -- judging -----------------------------------------------------------------------------


@dataclass
class Summary:
    """The warm runs of one variant: medians and worst cases."""

    variant: str
    label: str
    runs: int
    seconds: list[float]
    median_seconds: float
    median_rss_mib: float
    median_requests: float
    max_requests: int
    max_writes: int
    max_manifest_gets: int
    all_ok: bool
    median_pass_seconds: float | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    #: Resident only: the median time from the POST to the pass seen finished.
    median_wall_seconds: float | None = None

    @property
    def per_tag(self) -> float:
        """The worst run's requests at both registries per tag."""
        return self.max_requests / TOTAL_TAGS


def summarise(variant: str, runs: Sequence[SyncRun]) -> Summary:
    """Medians of time, RSS and requests; worst of requests, writes and manifest GETs."""
    median_run = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    kinds: Counter[str] = Counter()
    for stats in (median_run.src, median_run.dst):
        kinds.update(stats.by_kind)
    passes = [r.pass_seconds for r in runs if r.pass_seconds is not None]
    walls = [r.wall_seconds for r in runs if r.wall_seconds is not None]
    return Summary(
        variant=variant,
        label=LABELS[variant],
        runs=len(runs),
        seconds=[r.seconds for r in runs],
        median_seconds=statistics.median(r.seconds for r in runs),
        median_rss_mib=statistics.median(r.peak_rss_mib for r in runs),
        median_requests=statistics.median(r.requests for r in runs),
        max_requests=max(r.requests for r in runs),
        max_writes=max(r.writes for r in runs),
        max_manifest_gets=max(r.manifest_gets for r in runs),
        all_ok=all(r.ok for r in runs),
        median_pass_seconds=statistics.median(passes) if passes else None,
        by_kind=dict(sorted(kinds.items())),
        median_wall_seconds=statistics.median(walls) if walls else None,
    )


@dataclass
class Bar:
    """One bar of the issue for one ocimirror variant."""

    variant: str
    name: str
    value: str
    passed: bool


def judge(om: Summary, sk: Summary) -> list[Bar]:
    """Check an ocimirror variant's warm runs against the bars of issue 5.

    The speed is skopeo's median wall time over the variant's median `seconds`: the wall
    time of the one-shot command, the pass's own time in the state database for the
    resident form.
    """
    ratio = sk.median_seconds / om.median_seconds if om.median_seconds > 0 else 0.0
    if om.variant in TRUST_VARIANTS:
        return judge_trust(om, sk, ratio)
    return [
        Bar(
            om.variant,
            "every run correct (both tools)",
            "yes" if om.all_ok and sk.all_ok else "no",
            om.all_ok and sk.all_ok,
        ),
        Bar(om.variant, "no writes (PUT/POST/PATCH)", str(om.max_writes), om.max_writes == 0),
        Bar(om.variant, "no manifest GETs", str(om.max_manifest_gets), om.max_manifest_gets == 0),
        Bar(
            om.variant,
            f"< {REQUESTS_PER_TAG_BAR} requests/tag (both registries)",
            f"{om.per_tag:.3f}",
            om.per_tag < REQUESTS_PER_TAG_BAR,
        ),
        Bar(
            om.variant,
            f"skopeo time / ocimirror time >= {SPEED_BAR:g}",
            f"{ratio:.2f}x",
            ratio >= SPEED_BAR,
        ),
    ]


def judge_trust(om: Summary, sk: Summary, ratio: float) -> list[Bar]:
    """The bars of issue 17 for a trusting variant: no target HEADs, at most 1.05 requests
    per mutable tag besides one target tags list per repository, and the speed bar of its
    form (4x skopeo one-shot, 8x resident)."""
    per_tag = (om.max_requests - REPOS) / TOTAL_TAGS
    speed = TRUST_SPEED_BAR[om.variant]
    return [
        Bar(
            om.variant,
            "every run correct (both tools)",
            "yes" if om.all_ok and sk.all_ok else "no",
            om.all_ok and sk.all_ok,
        ),
        Bar(om.variant, "no writes (PUT/POST/PATCH)", str(om.max_writes), om.max_writes == 0),
        Bar(om.variant, "no manifest GETs", str(om.max_manifest_gets), om.max_manifest_gets == 0),
        Bar(
            om.variant,
            f"<= {TRUST_REQUESTS_PER_TAG_BAR} requests/tag + 1 target tags list/repository",
            f"{per_tag:.3f}",
            per_tag <= TRUST_REQUESTS_PER_TAG_BAR,
        ),
        Bar(
            om.variant,
            f"skopeo time / ocimirror time >= {speed:g}",
            f"{ratio:.2f}x",
            ratio >= speed,
        ),
    ]


# -- output ------------------------------------------------------------------------------


def render(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Render a plain-text table, the columns in `right` right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(row) for row in rows)])


def results_table(summaries: Sequence[Summary], startup: float) -> str:
    """One row per variant: median time and RSS, requests, writes, manifest GETs.

    `seconds` is the time the speed bar uses: the command's wall time for the one-shot
    rows and skopeo, the pass's run in the state database for the resident rows. `minus
    start-up` takes the time of `ocimirror version` off the one-shot median; `pass` is
    ocimirror's own timing of the pass: from its summary line (0.1 s resolution) for the
    one-shot command, from the state database for the resident one. `POST to done` is the
    resident pass's wall time from the POST to the poll that saw it finished.
    """
    header = [
        "warm pass (median of runs)",
        "seconds",
        "runs (s)",
        "minus start-up",
        "pass",
        "POST to done",
        "peak RSS MiB",
        "requests",
        "req/tag",
        "writes",
        "manifest GETs",
    ]
    resident = {name for name, _ in RESIDENT_VARIANTS}
    rows = [
        [
            s.label,
            f"{s.median_seconds:.2f}",
            " ".join(f"{x:.2f}" for x in s.seconds),
            f"{s.median_seconds - startup:.2f}" if s.variant in ONE_SHOT else "",
            ""
            if s.median_pass_seconds is None
            else f"{s.median_pass_seconds:.2f}"
            if s.variant in resident
            else f"{s.median_pass_seconds:.1f}",
            f"{s.median_wall_seconds:.2f}" if s.median_wall_seconds is not None else "",
            f"{s.median_rss_mib:.1f}",
            f"{s.median_requests:g}",
            f"{s.median_requests / TOTAL_TAGS:.3f}",
            str(s.max_writes),
            str(s.max_manifest_gets),
        ]
        for s in summaries
    ]
    return render(header, rows, {1, 3, 4, 5, 6, 7, 8, 9, 10})


def bars_table(bars: Sequence[Bar]) -> str:
    """One row per bar, one column per ocimirror variant: the value and PASS/FAIL."""
    variants = list(dict.fromkeys(b.variant for b in bars))
    names = list(dict.fromkeys(b.name for b in bars))
    cell = {(b.variant, b.name): f"{b.value} {'PASS' if b.passed else 'FAIL'}" for b in bars}
    header = ["bar", *(JUDGED[v] for v in variants)]
    # The trust_state variants are judged by bars of their own: "-" where a bar is not theirs.
    rows = [[name, *(cell.get((v, name), "-") for v in variants)] for name in names]
    return render(header, rows, set(range(1, len(header))))


def floor_report(floor: Floor, trust: Summary, sk: Summary) -> str:
    """The resident trusting pass against its floor, and the best ratio to skopeo any client
    sending the same requests could reach on this machine."""
    best = floor.best[1]
    lines = [
        "floor of the trusting pass (its requests by a bare aiohttp client, same registries):",
        *floor_lines(floor),
        f"  resident trusting pass / floor: {trust.median_seconds / best:.2f}"
        f" ({trust.median_seconds:.3f} s / {best:.3f} s)",
        f"  skopeo / floor: {sk.median_seconds / best:.2f}x (the highest ratio any client"
        f" sending these requests reaches here; bar {TRUST_SPEED_BAR['resident-trust']:g}x)",
    ]
    return "\n".join(lines)


def details(runs: Sequence[SyncRun]) -> str:
    """Render the requests of every run by method and kind, for diagnosis."""
    out = []
    for r in runs:
        wall = f", {r.wall_seconds:.2f} s POST to done" if r.wall_seconds is not None else ""
        out.append(f"{r.phase} {r.variant} ({r.seconds:.2f} s{wall}):")
        out += traffic_lines(r.src, r.dst)
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="warm runs (and resident passes) of each variant (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="save raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds before a run is killed (default: %(default)s)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.01,
        metavar="SECONDS",
        help="how often to ask a resident mirror whether its pass is done (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.poll <= 0:
        parser.error("--poll must be positive")
    return args


@dataclass
class Collected:
    """What one benchmark session measured."""

    machine: dict[str, str]
    startup: dict[str, dict[str, float]]
    seeding: dict[str, float]
    runs: list[SyncRun]
    #: Per resident variant: seconds until ready, VmHWM and VmRSS (MiB), exit code.
    resident: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: How often a resident mirror was asked whether its pass was done.
    poll_seconds: float = 0.01
    #: The trusting pass's requests sent by a bare aiohttp client (bench/floor.py).
    floor: Floor | None = None
    #: The 1-minute load average at the start, before the resident passes and at the end.
    load: dict[str, float] = field(default_factory=dict)


def collect(workdir: Path, args: argparse.Namespace) -> Collected:
    """Start the registries, seed the source, run every pass; stop the registries."""
    skopeo = Skopeo(workdir / "skopeo")
    env = skopeo.env()
    machine, baseline = describe_machine(skopeo, workdir)
    src = LocalRegistry(workdir / "src", exact_counting=False)
    dst_om = LocalRegistry(workdir / "dst-ocimirror", exact_counting=False)
    dst_sk = LocalRegistry(workdir / "dst-skopeo", exact_counting=False)
    dst_res = LocalRegistry(workdir / "dst-resident", exact_counting=False)
    # Both ocimirror variants of a form mirror into the same destination, each with its
    # own state; the resident form has a destination of its own, filled by its first pass.
    dsts = {
        "ocimirror": dst_om,
        "ocimirror-immutable": dst_om,
        "ocimirror-trust": dst_om,
        "skopeo": dst_sk,
    }
    runs: list[SyncRun] = []
    resident: dict[str, dict[str, float | None]] = {}
    load = {"start": os.getloadavg()[0]}
    try:
        for registry in (src, dst_om, dst_sk, dst_res):
            registry.start()
        print(
            f"seeding {REPOS} repositories x {TAGS_PER_REPO} tags into {src.host}/bench/",
            flush=True,
        )
        start = time.perf_counter()
        expected = seed_source(src)
        took = time.perf_counter() - start
        blobs = sum(len(e.blobs) for e in expected.values())
        blob_bytes = sum(e.blob_bytes for e in expected.values())
        print(
            f"  {sum(len(e.tags) for e in expected.values())} tags, {blobs} blobs, "
            f"{blob_bytes / 2**20:.1f} MiB in {took:.1f} s",
            flush=True,
        )
        cmds = commands(workdir, skopeo, src, dsts)

        def run(variant: str, phase: str) -> None:
            log = workdir / f"{variant}-{phase}.log"
            runs.append(
                measure(
                    variant,
                    phase,
                    cmds[variant],
                    env,
                    src,
                    dsts[variant],
                    expected,
                    log,
                    args.timeout,
                )
            )

        # Fill the destinations; the immutable variant's first pass records its tags.
        run("ocimirror", "cold")
        run("ocimirror-immutable", "record")
        run("ocimirror-trust", "record")
        run("skopeo", "cold")
        names = [name for name, _ in VARIANTS]
        for position in range(args.rounds):
            for variant in names if position % 2 == 0 else names[::-1]:
                run(variant, f"warm-{position + 1}")

        # The resident form: one serve process per variant, the cold fill (or the
        # recording pass) then the warm passes, one after another.
        load["resident"] = os.getloadavg()[0]
        print("resident: ocimirror serve, passes triggered over its API", flush=True)
        for variant, immutable, first in (
            ("resident", False, "cold"),
            ("resident-immutable", True, "record"),
            ("resident-trust", False, "record"),
        ):
            config = ocimirror_config(
                workdir / f"{variant}.yml",
                src,
                dst_res,
                immutable=immutable,
                schedule=0,
                trust=variant in TRUST_VARIANTS,
            )
            passes, process = run_resident(
                variant, first, config, workdir, env, src, dst_res, expected, args
            )
            runs += passes
            resident[variant] = process

        # The floor of the trusting pass: its 540 requests by a bare client, same registries.
        print("floor: the trusting pass's requests by a bare aiohttp client", flush=True)
        floor = measure_floor(
            f"http://{src.host}",
            f"http://{dst_res.host}",
            REPO_NAMES,
            [f"mirror/{repo}" for repo in REPO_NAMES],
            rounds=args.rounds,
        )
        print("\n".join(floor_lines(floor)), flush=True)
        load["end"] = os.getloadavg()[0]
    finally:
        for registry in (dst_res, dst_sk, dst_om, src):
            registry.stop()
    seeding = {"seconds": took, "blobs": blobs, "blob_bytes": blob_bytes}
    return Collected(machine, baseline, seeding, runs, resident, args.poll, floor, load)


def report(collected: Collected, json_path: Path | None) -> None:
    """Judge the warm runs and print the tables; write the raw results to `json_path`."""
    runs = collected.runs
    startup = collected.startup["ocimirror"]["seconds"]
    warm = {
        name: [r for r in runs if r.variant == name and r.phase.startswith("warm")]
        for name in LABELS
    }
    summaries = [summarise(name, warm[name]) for name in LABELS if warm[name]]
    by_variant = {s.variant: s for s in summaries}
    # The resident passes' peak RSS is the serve process's VmHWM after all of them.
    for name, process in collected.resident.items():
        if name in by_variant and process.get("vm_hwm_mib") is not None:
            by_variant[name].median_rss_mib = float(process["vm_hwm_mib"] or 0.0)
    bars = [
        bar
        for name in JUDGED
        if name in by_variant
        for bar in judge(by_variant[name], by_variant["skopeo"])
    ]

    print()
    print(
        f"{TOTAL_TAGS} tags in {REPOS} repositories, nothing to do; "
        f"`ocimirror version` takes {startup:.2f} s (process start-up, best of 3)"
    )
    print()
    print(results_table(summaries, startup))
    poll_ms = collected.poll_seconds * 1000
    print(
        "seconds: the command's wall time (one-shot, skopeo); for the resident rows the run"
        " of the pass\n"
        "  in the state database (finished_at - started_at). POST to done: the resident pass's"
        " wall time,\n"
        f"  up to one poll interval ({poll_ms:g} ms) late. Peak RSS of the resident rows: the"
        " serve process's\n"
        "  VmHWM after all its passes."
    )
    print()
    print(bars_table(bars))
    if collected.floor is not None and "resident-trust" in by_variant:
        print()
        print(floor_report(collected.floor, by_variant["resident-trust"], by_variant["skopeo"]))
    if collected.load:
        print("1-minute load: " + ", ".join(f"{k} {v:.1f}" for k, v in collected.load.items()))
    print()
    print("requests of the median warm run, both registries, by method and kind:")
    for s in summaries:
        print(f"  {s.label}: " + ", ".join(f"{k} {n}" for k, n in s.by_kind.items()))
    print()
    print("requests of every run by method and kind:")
    print(details(runs))
    print()
    failed = [b for b in bars if not b.passed]
    for b in failed:
        print(f"FAIL {LABELS[b.variant]}: {b.name} ({b.value})")
    forms = ", ".join(
        f"{form} {sum(b.passed for b in of)}/{len(of)}"
        for form, of in (
            ("one-shot", [b for b in bars if b.variant in ONE_SHOT]),
            ("resident", [b for b in bars if b.variant not in ONE_SHOT]),
        )
        if of
    )
    print(
        f"SUMMARY: {len(bars) - len(failed)}/{len(bars)} bars PASS"
        + (f", {len(failed)} FAIL" if failed else " - all bars met")
        + f" ({forms})"
    )
    if json_path:
        raw: dict[str, Any] = {
            "machine": collected.machine,
            "startup": collected.startup,
            "seeding": collected.seeding,
            "resident": collected.resident,
            "poll_seconds": collected.poll_seconds,
            "floor": asdict(collected.floor) if collected.floor is not None else None,
            "load": collected.load,
            "runs": [asdict(r) for r in runs],
            "summaries": [asdict(s) for s in summaries],
            "bars": [asdict(b) for b in bars],
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"raw results written to {json_path}")


def _exit_on_signal(signum: int, _frame: object) -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so that `finally` blocks clean up."""
    raise SystemExit(128 + signum)


def _kill_running_tools() -> None:
    """Kill any tool still running.

    `run_measured` and `ServeProcess` start each in a session of its own.
    """
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            pid = int(stat.parent.name)
            if ppid == me and os.getsid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; return 0 whatever the verdicts."""
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="ocimirror-bench-sync-"))
    try:
        collected = collect(workdir, args)
    finally:
        _kill_running_tools()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(collected, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
