"""Benchmark `ocimirror copy --all-tags` against `skopeo sync --all` between local registries.

Run it as `.venv/bin/python bench/run.py [--corpus small,large,multiarch] [--json PATH]
[--keep]`. For each corpus the sample images are pushed once into a source registry;
then each tool mirrors the repository into its own fresh destination registry twice: a
cold run (the destination is empty) and a warm run (everything is already there). The
order of the tools alternates from one corpus to the next.

For every run this measures the wall time (`time.perf_counter` around the child), the
child's peak RSS (`ru_maxrss` from `os.wait4`, in KiB on Linux, reaped by a bare
interpreter so this script's own memory is not counted) and the requests both
registries answered (their access logs, from a `mark()` before the run). After every run
the destination is checked against what was pushed: every tag with the same manifest
digest, every child manifest and every blob present; a wrong run fails its bar whatever
its speed. The results are compared with the bars of the issue and printed as a table;
the exit status is 0 even when a bar fails, since this is a report.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ocimirror import mediatypes as mt
from ocimirror.testkit.accesslog import Request
from ocimirror.testkit.images import (
    SampleImage,
    corpus_large_layers,
    corpus_multiarch,
    corpus_small_tags,
)
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed_sync
from ocimirror.testkit.skopeo import Skopeo

ROOT = Path(__file__).resolve().parent.parent
OCIMIRROR = ROOT / ".venv" / "bin" / "ocimirror"

TOOLS: tuple[str, ...] = ("ocimirror", "skopeo")
PHASES: tuple[str, ...] = ("cold", "warm")

#: Cold runs: skopeo's time over ocimirror's must reach this, per corpus.
COLD_BARS: dict[str, float] = {"small": 2.5, "large": 1.4, "multiarch": 2.2}
#: Warm runs (everything already at the destination): the same ratio, every corpus.
WARM_BAR = 5.0
#: ocimirror's peak RSS must stay below this in every run.
RSS_BAR_MIB = 150.0

WRITE_METHODS = frozenset({"PUT", "POST", "PATCH"})
ACCEPT = ", ".join([mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST])


T = TypeVar("T")


@dataclass(frozen=True)
class Corpus:
    """A named set of tagged sample images and the repository it is pushed to."""

    name: str
    repo: str
    make: Callable[[], Iterable[tuple[str, SampleImage]]]
    description: str


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus("small", "bench/small", corpus_small_tags, "200 tags x 3 layers of 64 KiB"),
        Corpus("large", "bench/large", corpus_large_layers, "4 tags x 4 layers of 64 MiB"),
        Corpus("multiarch", "bench/multiarch", corpus_multiarch, "20 indexes x 4 platforms, 1 MiB"),
    )
}


@dataclass
class Expected:
    """What a corpus holds: tag digests, every manifest and blob digest, and its bytes."""

    tags: dict[str, str] = field(default_factory=dict)
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    blob_bytes: int = 0

    def record(
        self, images: Iterable[tuple[str, SampleImage]]
    ) -> Iterator[tuple[str, SampleImage]]:
        """Pass `images` through, noting their digests (images are not kept)."""
        for tag, image in images:
            self.tags[tag] = image.digest
            self.manifests.update(m.digest for m in image.all_manifests())
            for blob in image.all_blobs():
                if blob.digest not in self.blobs:
                    self.blobs.add(blob.digest)
                    self.blob_bytes += blob.size
            yield tag, image


@dataclass
class RequestStats:
    """Requests one registry answered during one run."""

    total: int
    by_method: dict[str, int]
    by_kind: dict[str, int]
    manifest_gets: int
    writes: int
    errors: int

    @classmethod
    def of(cls, requests: Sequence[Request]) -> RequestStats:
        """Summarise access log entries."""
        return cls(
            total=len(requests),
            by_method=dict(sorted(Counter(r.method for r in requests).items())),
            by_kind=dict(sorted(Counter(f"{r.method} {r.kind}" for r in requests).items())),
            manifest_gets=sum(1 for r in requests if r.method == "GET" and r.kind == "manifest"),
            writes=sum(1 for r in requests if r.method in WRITE_METHODS),
            errors=sum(1 for r in requests if r.status >= 400),
        )


def traffic_lines(src: RequestStats, dst: RequestStats) -> list[str]:
    """Two indented lines: what the source and the destination registry were asked."""
    asked_src = ", ".join(f"{k} {n}" for k, n in src.by_kind.items()) or "-"
    asked_dst = ", ".join(f"{k} {n}" for k, n in dst.by_kind.items()) or "-"
    return [
        f"    src ({src.total}, {src.errors} errors): {asked_src}",
        f"    dst ({dst.total}, {dst.errors} errors, {dst.writes} writes): {asked_dst}",
    ]


def pick_corpora(parser: argparse.ArgumentParser, text: str, known: Mapping[str, T]) -> list[T]:
    """The corpora a comma-separated `--corpus` names; a usage error for unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"unknown corpus {unknown}; choose from {', '.join(known)}")
    return [known[n] for n in names]


@dataclass
class RunResult:
    """One run of one tool over one corpus."""

    corpus: str
    phase: str
    tool: str
    command: list[str]
    exit_code: int
    seconds: float
    peak_rss_mib: float
    src: RequestStats
    dst: RequestStats
    problems: list[str]
    stderr_tail: str

    @property
    def ok(self) -> bool:
        """Whether the tool succeeded and the destination holds the whole corpus."""
        return self.exit_code == 0 and not self.problems


@dataclass
class Verdict:
    """One bar: a corpus and phase, ocimirror against skopeo."""

    corpus: str
    phase: str
    ratio: float | None
    bar: float
    passed: bool
    failures: list[str]


# -- running a child ----------------------------------------------------------------------


#: Runs in a bare interpreter (`python -I -S -c`): spawn the command, time it, reap it with
#: `os.wait4` and write exit status, seconds, CPU seconds (user, system) and `ru_maxrss`
#: (KiB) as JSON to argv[1].
REAPER = """\
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
import json
with open(out, "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "seconds": seconds,
               "user": usage.ru_utime, "system": usage.ru_stime,
               "maxrss_kib": usage.ru_maxrss}, f)
"""


class ChildServer:
    """An ocimirror server as a child process in a session of its own, its output in a log:
    `start()` waits for a health URL to answer 200, `stop()` sends SIGTERM and waits."""

    #: The path polled until it answers 200.
    health_path = "/healthz"
    #: What to call it in errors.
    what = "ocimirror"

    def __init__(self, command: list[str], env: dict[str, str], log: Path, port: int) -> None:
        """Prepare the command; nothing runs until `start()`."""
        self.command = command
        self.env = env
        self.log = log
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def healthy(self) -> bool:
        """Tell whether the health path answers 200 now."""
        url = f"http://{self.host}{self.health_path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, http.client.HTTPException):
            return False

    def start(self, timeout: float = 60.0) -> float:
        """Start the process; return the seconds until the health path answered 200."""
        start = time.perf_counter()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,
            )
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode}: {self.tail()}")
            if self.healthy():
                return time.perf_counter() - start
            time.sleep(0.02)
        raise RuntimeError(f"{self.what} not ready after {timeout:g} s: {self.tail()}")

    def tail(self, chars: int = 1500) -> str:
        """The end of the process's output."""
        try:
            return self.log.read_text("utf-8", "replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait; return the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return None
        return self.proc.returncode


def reap(
    cmd: Sequence[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[int, dict[str, Any] | None]:
    """Run `cmd` under `REAPER`; return the reaper's exit code and what it measured (None
    when the reaper did not finish cleanly, e.g. killed after `timeout`).

    `ru_maxrss` cannot come from a child of this process: Linux carries a process's
    peak RSS across exec, and a child forked (or vforked) from here starts with this
    process's memory, so even `true` would report this script's own peak (hundreds of
    MiB once the large corpus is made). So a bare Python interpreter (`REAPER`, about
    8 MiB) spawns the command, times it with `time.perf_counter` and reaps it with
    `os.wait4`; this process reaps the reaper in turn. Output goes to `log`; the whole
    process group is killed after `timeout` seconds.
    """
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", REAPER, str(result), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, _ = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0 or not result.exists():
        return proc.returncode, None
    measured: dict[str, Any] = json.loads(result.read_text())
    return proc.returncode, measured


def run_measured(
    cmd: Sequence[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[int, float, float]:
    """Run `cmd` (see `reap`); return (exit code, wall seconds, peak RSS in MiB) of the
    command."""
    code, measured = reap(cmd, env, log, timeout)
    if measured is None:
        return (code or -1), float(timeout), 0.0
    return int(measured["code"]), float(measured["seconds"]), measured["maxrss_kib"] / 1024


def tool_command(
    tool: str, skopeo: Skopeo, src: LocalRegistry, dst: LocalRegistry, repo: str
) -> list[str]:
    """Return the command that mirrors `repo` from `src` to the same name at `dst`."""
    if tool == "ocimirror":
        return [
            str(OCIMIRROR),
            "copy",
            "--all-tags",
            "--quiet",
            "--no-referrers",  # skopeo copies none: the bars are for images alone
            f"{src.host}/{repo}",
            f"{dst.host}/{repo}",
        ]
    # skopeo sync appends the last component of the source repository to the
    # destination: <src>/bench/small -> <dst>/bench + /small = <dst>/bench/small.
    parent = repo.rsplit("/", 1)[0]
    return skopeo.command(
        "sync",
        "--all",
        "--src",
        "docker",
        "--dest",
        "docker",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"{src.host}/{repo}",
        f"{dst.host}/{parent}",
    )


# -- checking the destination ----------------------------------------------------------------


def verify(dst: LocalRegistry, repo: str, expected: Expected) -> list[str]:
    """Return what is missing or wrong at `dst` compared with the pushed corpus."""
    problems: list[str] = []
    tags = set(dst.tags(repo))
    missing = sorted(set(expected.tags) - tags)
    if missing:
        problems.append(f"{len(missing)} of {len(expected.tags)} tags missing (e.g. {missing[0]})")
    extra = sorted(tags - set(expected.tags))
    if extra:
        problems.append(f"{len(extra)} unexpected tags (e.g. {extra[0]})")
    wrong = 0
    for tag in sorted(set(expected.tags) & tags):
        resp = dst.http("HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
        if resp.status != 200 or resp.headers.get("Docker-Content-Digest") != expected.tags[tag]:
            wrong += 1
    if wrong:
        problems.append(f"{wrong} tags with another manifest digest than the source")
    absent = sum(
        1
        for digest in expected.manifests
        if dst.http("HEAD", f"/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT}).status
        != 200
    )
    if absent:
        problems.append(f"{absent} of {len(expected.manifests)} manifests missing")
    absent = sum(
        1
        for digest in expected.blobs
        if dst.http("HEAD", f"/v2/{repo}/blobs/{digest}").status != 200
    )
    if absent:
        problems.append(f"{absent} of {len(expected.blobs)} blobs missing")
    return problems


# -- the benchmark --------------------------------------------------------------------------


def bench_tool(
    corpus: Corpus,
    tool: str,
    expected: Expected,
    src: LocalRegistry,
    workdir: Path,
    skopeo: Skopeo,
    timeout: float,
) -> list[RunResult]:
    """Mirror `corpus` with `tool` into a fresh destination, cold then warm."""
    dst = LocalRegistry(workdir / f"dst-{corpus.name}-{tool}", exact_counting=False)
    results: list[RunResult] = []
    dst.start()
    try:
        cmd = tool_command(tool, skopeo, src, dst, corpus.repo)
        for phase in PHASES:
            src_mark, dst_mark = src.mark(), dst.mark()
            log = workdir / f"{corpus.name}-{tool}-{phase}.log"
            code, seconds, rss = run_measured(cmd, skopeo.env(), log, timeout)
            src_stats = RequestStats.of(src.requests(since=src_mark))
            dst_stats = RequestStats.of(dst.requests(since=dst_mark))
            problems = verify(dst, corpus.repo, expected)
            tail = log.read_text("utf-8", "replace")[-2000:]
            result = RunResult(
                corpus.name,
                phase,
                tool,
                cmd,
                code,
                seconds,
                rss,
                src_stats,
                dst_stats,
                problems,
                tail,
            )
            results.append(result)
            status = "ok" if result.ok else f"FAILED (exit {code}; {'; '.join(problems)})"
            print(
                f"  {corpus.name:<9} {phase:<4} {tool:<9} {seconds:8.2f} s "
                f"{rss:7.1f} MiB  req src {src_stats.total} dst {dst_stats.total}  {status}",
                flush=True,
            )
            if code != 0:
                print("    " + tail.strip().replace("\n", "\n    ")[-1500:], flush=True)
    finally:
        dst.stop()
    return results


def judge(corpus: str, phase: str, runs: dict[str, RunResult]) -> Verdict:
    """Compare ocimirror with skopeo for one corpus and phase against the bars."""
    om, sk = runs["ocimirror"], runs["skopeo"]
    bar = COLD_BARS[corpus] if phase == "cold" else WARM_BAR
    failures: list[str] = []
    ratio = sk.seconds / om.seconds if om.seconds > 0 else None
    if not om.ok:
        failures.append(f"ocimirror run wrong (exit {om.exit_code}; {'; '.join(om.problems)})")
    if not sk.ok:
        failures.append(f"skopeo run wrong (exit {sk.exit_code}; {'; '.join(sk.problems)})")
    if ratio is None or ratio < bar:
        failures.append(f"speed {ratio or 0:.2f}x < {bar}x")
    if om.peak_rss_mib >= RSS_BAR_MIB:
        failures.append(f"ocimirror RSS {om.peak_rss_mib:.1f} MiB >= {RSS_BAR_MIB:.0f}")
    if phase == "warm":
        if om.dst.writes:
            failures.append(f"ocimirror wrote {om.dst.writes} times to the destination")
        if om.src.manifest_gets:
            failures.append(f"ocimirror sent {om.src.manifest_gets} manifest GETs to the source")
    return Verdict(corpus, phase, ratio, bar, not failures, failures)


def table(results: Sequence[RunResult], verdicts: Sequence[Verdict]) -> str:
    """Render the results as a plain-text table, the verdict on each ocimirror row."""
    by_key = {(v.corpus, v.phase): v for v in verdicts}
    header = [
        "corpus",
        "phase",
        "tool",
        "seconds",
        "peak RSS MiB",
        "requests src/dst",
        "ratio",
        "bar",
        "result",
    ]
    rows: list[list[str]] = []
    ordered = sorted(
        results,
        key=lambda r: (list(CORPORA).index(r.corpus), PHASES.index(r.phase), TOOLS.index(r.tool)),
    )
    for r in ordered:
        verdict = by_key.get((r.corpus, r.phase))
        ratio = bar = outcome = ""
        if r.tool == "ocimirror" and verdict is not None:
            ratio = f"{verdict.ratio:.2f}x faster" if verdict.ratio is not None else "n/a"
            bar = f">= {verdict.bar}x"
            outcome = "PASS" if verdict.passed else "FAIL"
        rows.append(
            [
                r.corpus,
                r.phase,
                r.tool,
                f"{r.seconds:.2f}",
                f"{r.peak_rss_mib:.1f}",
                f"{r.src.total}/{r.dst.total}",
                ratio,
                bar,
                outcome,
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(row) for row in rows)])


def details(results: Sequence[RunResult]) -> str:
    """Render the requests of every run by method and kind, for diagnosis."""
    out = []
    for r in results:
        out.append(f"{r.corpus} {r.phase} {r.tool}:")
        out += traffic_lines(r.src, r.dst)
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--corpus",
        default=",".join(CORPORA),
        help="comma-separated corpora to run (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="save raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds before a run is killed (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    args.corpora = pick_corpora(parser, args.corpus, CORPORA)
    return args


def tool_versions(skopeo: Skopeo) -> dict[str, str]:
    """Return the versions of the tools under test."""
    versions = {}
    for tool, cmd in (
        ("ocimirror", [str(OCIMIRROR), "version"]),
        ("skopeo", skopeo.command("--version")),
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=skopeo.env(), check=False)
        versions[tool] = (proc.stdout or proc.stderr).strip()
    return versions


def startup_baseline(skopeo: Skopeo, workdir: Path) -> dict[str, dict[str, float]]:
    """Time each tool doing nothing (`version`), best of 3: the floor of any run."""
    baseline = {}
    for tool, cmd in (
        ("ocimirror", [str(OCIMIRROR), "version"]),
        ("skopeo", skopeo.command("--version")),
    ):
        runs = [
            run_measured(cmd, skopeo.env(), workdir / f"startup-{tool}.log", 60) for _ in range(3)
        ]
        baseline[tool] = {
            "seconds": min(r[1] for r in runs),
            "peak_rss_mib": max(r[2] for r in runs),
        }
    return baseline


def describe_machine(
    skopeo: Skopeo, workdir: Path
) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Print and return the machine and tool versions, and each tool's start-up baseline."""
    machine = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        **tool_versions(skopeo),
    }
    print(f"work dir {workdir}; {machine}", flush=True)
    baseline = startup_baseline(skopeo, workdir)
    print(
        "startup (version command, best of 3): "
        + ", ".join(
            f"{t} {b['seconds']:.3f} s / {b['peak_rss_mib']:.1f} MiB" for t, b in baseline.items()
        ),
        flush=True,
    )
    return machine, baseline


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; return 0 whatever the verdicts."""
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ocimirror-bench-"))
    skopeo = Skopeo(workdir / "skopeo")
    machine, baseline = describe_machine(skopeo, workdir)
    src = LocalRegistry(workdir / "src", exact_counting=False)
    results: list[RunResult] = []
    verdicts: list[Verdict] = []
    seeding: dict[str, dict[str, float]] = {}
    try:
        src.start()
        for position, corpus in enumerate(args.corpora):
            expected = Expected()
            print(
                f"seeding {corpus.name} ({corpus.description}) into {src.host}/{corpus.repo}",
                flush=True,
            )
            start = time.perf_counter()
            seed_sync(src, corpus.repo, expected.record(corpus.make()))
            took = time.perf_counter() - start
            seeding[corpus.name] = {"seconds": took, "blob_bytes": expected.blob_bytes}
            print(
                f"  {len(expected.tags)} tags, {len(expected.manifests)} manifests, "
                f"{len(expected.blobs)} blobs, {expected.blob_bytes / 2**20:.1f} MiB in {took:.1f} s",
                flush=True,
            )
            order = TOOLS if position % 2 == 0 else TOOLS[::-1]
            runs: dict[tuple[str, str], RunResult] = {}
            for tool in order:
                for result in bench_tool(
                    corpus, tool, expected, src, workdir, skopeo, args.timeout
                ):
                    runs[(result.phase, result.tool)] = result
                    results.append(result)
                if not args.keep:
                    shutil.rmtree(workdir / f"dst-{corpus.name}-{tool}", ignore_errors=True)
            for phase in PHASES:
                verdicts.append(judge(corpus.name, phase, {t: runs[(phase, t)] for t in TOOLS}))
    finally:
        src.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(table(results, verdicts))
    print()
    print("requests by method and kind:")
    print(details(results))
    print()
    failed = [v for v in verdicts if not v.passed]
    for v in failed:
        print(f"FAIL {v.corpus} {v.phase}: {'; '.join(v.failures)}")
    print(
        f"SUMMARY: {len(verdicts) - len(failed)}/{len(verdicts)} bars PASS"
        + (f", {len(failed)} FAIL" if failed else " - all bars met")
    )
    if args.json:
        report: dict[str, Any] = {
            "machine": machine,
            "startup": baseline,
            "seeding": seeding,
            "runs": [asdict(r) for r in results],
            "verdicts": [asdict(v) for v in verdicts],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"raw results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
