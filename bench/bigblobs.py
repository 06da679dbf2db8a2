"""Big layers: `ocimirror copy --all-tags` against a bare copier and `skopeo sync`.

Run it as `.venv/bin/python bench/bigblobs.py [--rounds 3] [--json PATH] [--profile DIR]`.
The `large` corpus of bench/run.py (4 tags x 4 unique layers of 64 MiB, 1 GiB) is pushed
once into a source registry, with its tiny twin `bench/tiny` (the same shape, 1 KiB
layers); then, round after round, each tool copies the twin and then the corpus cold
into a fresh destination registry of its own, the order of the tools turning each round
(`--baseline DIR` adds `before`: ocimirror importing the `src` directory DIR):

- `ocimirror`: `ocimirror copy --all-tags --quiet --no-referrers SRC/REPO DST/REPO`;
- `bare`: bench/barecopy.py, the floor for a copier in Python: one aiohttp session, one
  GET per manifest, then per distinct blob a POST and one monolithic PUT whose body is
  the source's GET response streamed as it arrives (`Content-Length` and `?digest=`
  given; no hashing, no retries, no checks of its own), every blob at once;
- `skopeo`: `skopeo sync --all` as bench/run.py runs it.

For each run it measures the wall time, the tool's CPU (user + system, `os.wait4`) and
peak RSS (reaped by a bare interpreter, as bench/run.py explains), and the CPU both
registries spent meanwhile (`/proc/PID/stat`): on 2 cores the destination registry,
which hashes and writes every byte, is the biggest consumer. After every run the
destination is checked as bench/run.py checks it. The tiny copy's time and CPU are the
tool's fixed cost (start-up, requests, exit). The report gives the median of the
rounds per tool and the ratios the issue asks for: bare time / ocimirror time (target
0.9 or more), skopeo time / ocimirror time (1.5 or more), ocimirror peak RSS (under
150 MiB). `--profile DIR` adds one more ocimirror run under `py-spy record` (raw
collapsed stacks of every thread, idle included) and prints its top frames.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ocimirror.testkit.images import corpus_large_layers
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed_sync
from ocimirror.testkit.skopeo import Skopeo
from run import CORPORA, Expected, reap, tool_command, verify

TOOLS: tuple[str, ...] = ("ocimirror", "before", "bare", "skopeo")
BARE_TARGET = 0.9
SKOPEO_TARGET = 1.5
RSS_BAR_MIB = 150.0
#: The repository of the tiny twin of the corpus (same tags and layers, 1 KiB each).
TINY = "bench/tiny"
#: The bare copier.
BARE = Path(__file__).resolve().parent / "barecopy.py"


@dataclass
class Run:
    """One cold copy by one tool."""

    round: int
    tool: str
    exit_code: int
    seconds: float
    cpu: float
    peak_rss_mib: float
    dst_cpu: float
    src_cpu: float
    requests: dict[str, int]
    problems: list[str]
    #: The same tool copying `TINY` (the corpus's shape, 1 KiB layers) just before: what
    #: a copy costs whatever its bytes (start-up, requests, exit).
    fixed_seconds: float = 0.0
    fixed_cpu: float = 0.0

    @property
    def transfer_seconds(self) -> float:
        """The wall time beyond the fixed cost: moving the bytes."""
        return self.seconds - self.fixed_seconds

    @property
    def ok(self) -> bool:
        """Whether the tool succeeded and the destination holds the whole corpus."""
        return self.exit_code == 0 and not self.problems


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a live process has used, from /proc/PID/stat."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(
    cmd: Sequence[str], env: dict[str, str], log: Path, timeout: float
) -> dict[str, Any]:
    """Run `cmd` under the bare reaper; return what it measured (code -1 on a timeout)."""
    _, measured = reap(cmd, env, log, timeout)
    if measured is None:
        return {"code": -1, "seconds": timeout, "user": 0.0, "system": 0.0, "maxrss_kib": 0}
    return measured


def command(
    tool: str, skopeo: Skopeo, src: LocalRegistry, dst: LocalRegistry, repo: str
) -> list[str]:
    """The command line of one tool copying `repo` from `src` to `dst`."""
    if tool == "bare":
        return [sys.executable, str(BARE), src.host, dst.host, repo]
    return tool_command("ocimirror" if tool == "before" else tool, skopeo, src, dst, repo)


def environment(tool: str, skopeo: Skopeo, baseline: Path | None) -> dict[str, str]:
    """The environment of one tool: skopeo's private one; `before` imports `baseline`."""
    env = skopeo.env()
    if tool == "before" and baseline is not None:
        env["PYTHONPATH"] = str(baseline)
    return env


def compile_sources(*trees: Path) -> None:
    """Compile the ocimirror sources to bytecode, as an installed copy has it: with
    PYTHONDONTWRITEBYTECODE set, each run would otherwise compile every module again."""
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True)


def bench_one(
    round_: int,
    tool: str,
    src: LocalRegistry,
    workdir: Path,
    skopeo: Skopeo,
    expected: Expected,
    repo: str,
    timeout: float,
    baseline: Path | None = None,
) -> Run:
    """Copy the corpus cold with `tool` into a fresh destination and measure it."""
    dst = LocalRegistry(workdir / f"dst-{round_}-{tool}", exact_counting=False)
    dst.start()
    try:
        env = environment(tool, skopeo, baseline)
        tiny = command(tool, skopeo, src, dst, TINY)
        fixed = run_measured(tiny, env, workdir / f"{round_}-{tool}-tiny.log", timeout)
        mark = dst.mark()
        cmd = command(tool, skopeo, src, dst, repo)
        src_cpu, dst_cpu = process_cpu(src.pid), process_cpu(dst.pid)
        measured = run_measured(cmd, env, workdir / f"{round_}-{tool}.log", timeout)
        src_cpu, dst_cpu = process_cpu(src.pid) - src_cpu, process_cpu(dst.pid) - dst_cpu
        requests = Counter(f"{r.method} {r.kind}" for r in dst.requests(since=mark))
        problems = verify(dst, repo, expected)
    finally:
        dst.stop()
        shutil.rmtree(workdir / f"dst-{round_}-{tool}", ignore_errors=True)
    run = Run(
        round_,
        tool,
        int(measured["code"]),
        float(measured["seconds"]),
        float(measured["user"]) + float(measured["system"]),
        measured["maxrss_kib"] / 1024,
        dst_cpu,
        src_cpu,
        dict(sorted(requests.items())),
        problems,
        float(fixed["seconds"]),
        float(fixed["user"]) + float(fixed["system"]),
    )
    if fixed["code"] != 0:
        run.problems.append(f"the tiny copy failed (exit {fixed['code']})")
    status = "ok" if run.ok else f"FAILED (exit {run.exit_code}; {'; '.join(problems)})"
    print(
        f"  round {round_} {tool:<9} {run.seconds:6.2f} s  cpu {run.cpu:5.2f} s  "
        f"{run.peak_rss_mib:6.1f} MiB  dst cpu {dst_cpu:5.2f} s  src cpu {src_cpu:5.2f} s  "
        f"(tiny: {run.fixed_seconds:5.2f} s, cpu {run.fixed_cpu:4.2f} s)  {status}",
        flush=True,
    )
    return run


def profile(
    src: LocalRegistry, workdir: Path, skopeo: Skopeo, repo: str, out: Path, timeout: float
) -> None:
    """Copy once more under py-spy (every thread, idle frames too); print the top frames."""
    dst = LocalRegistry(workdir / "dst-profile", exact_counting=False)
    dst.start()
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "ocimirror.txt"
    try:
        cmd = tool_command("ocimirror", skopeo, src, dst, repo)
        binary = Path(sys.executable).parent / "py-spy"
        if not binary.exists():
            raise SystemExit(f"--profile needs py-spy beside {sys.executable}: pip install py-spy")
        spy = [str(binary), "record", "--format", "raw"]
        spy += ["--idle", "--threads", "--rate", "250", "--output", str(raw), "--", *cmd]
        subprocess.run(spy, env=skopeo.env(), timeout=timeout, check=True, capture_output=True)
    finally:
        dst.stop()
        shutil.rmtree(workdir / "dst-profile", ignore_errors=True)
    print(f"py-spy stacks in {raw}; busiest leaf frames (idle included):")
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaves[stack.split(";")[-1]] += int(count)
        total += int(count)
    for frame, n in leaves.most_common(15):
        print(f"  {100 * n / total:5.1f}%  {frame}")


def median(runs: Sequence[Run], attr: str) -> float:
    """The median of one measure over runs."""
    return statistics.median(float(getattr(r, attr)) for r in runs)


def report(runs: Sequence[Run]) -> str:
    """A markdown table of medians per tool, with ocimirror's time over each tool's."""
    by_tool = {t: [r for r in runs if r.tool == t] for t in TOOLS}
    by_tool = {t: rs for t, rs in by_tool.items() if rs}
    om = by_tool.get("ocimirror", [])
    lines = [
        "| tool | ok | seconds, median (range) | tool CPU s | peak RSS MiB"
        " | dst registry CPU s | src registry CPU s | all CPU s | tiny copy s (CPU s)"
        " | seconds - tiny | its time / ocimirror's (whole, - tiny) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for tool, rs in by_tool.items():
        secs = [r.seconds for r in rs]
        sec, net = median(rs, "seconds"), median(rs, "transfer_seconds")
        ratio = ""
        if om and tool != "ocimirror":
            ratio = f"{sec / median(om, 'seconds'):.2f}, {net / median(om, 'transfer_seconds'):.2f}"
        total = statistics.median(r.cpu + r.dst_cpu + r.src_cpu for r in rs)
        lines.append(
            f"| {tool} | {sum(r.ok for r in rs)}/{len(rs)} "
            f"| {sec:.2f} ({min(secs):.2f} to {max(secs):.2f}) | {median(rs, 'cpu'):.2f} "
            f"| {max(r.peak_rss_mib for r in rs):.1f} | {median(rs, 'dst_cpu'):.2f} "
            f"| {median(rs, 'src_cpu'):.2f} | {total:.2f} "
            f"| {median(rs, 'fixed_seconds'):.2f} ({median(rs, 'fixed_cpu'):.2f}) "
            f"| {net:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def verdicts(runs: Sequence[Run]) -> list[str]:
    """The issue's targets, each PASS or FAIL with its numbers."""
    by_tool = {t: [r for r in runs if r.tool == t] for t in TOOLS}
    out: list[str] = []
    om = by_tool["ocimirror"]
    if not om:
        return out
    t = median(om, "seconds")
    if by_tool["before"]:
        ratio = median(by_tool["before"], "seconds") / t
        cpu = median(by_tool["before"], "cpu") / median(om, "cpu")
        out.append(f"INFO before/ocimirror: time {ratio:.2f}, tool CPU {cpu:.2f}")
    if by_tool["bare"]:
        ratio = median(by_tool["bare"], "seconds") / t
        out.append(
            f"{'PASS' if ratio >= BARE_TARGET else 'FAIL'} bare/ocimirror {ratio:.2f} (>= {BARE_TARGET})"
        )
    if by_tool["skopeo"]:
        ratio = median(by_tool["skopeo"], "seconds") / t
        out.append(
            f"{'PASS' if ratio >= SKOPEO_TARGET else 'FAIL'} skopeo/ocimirror {ratio:.2f}x (>= {SKOPEO_TARGET}x)"
        )
    net = median(om, "transfer_seconds")
    for tool in ("bare", "skopeo"):
        if by_tool[tool]:
            ratio = median(by_tool[tool], "transfer_seconds") / net
            out.append(f"INFO {tool}/ocimirror without the tiny copy's time: {ratio:.2f}")
    rss = max(r.peak_rss_mib for r in om)
    out.append(
        f"{'PASS' if rss < RSS_BAR_MIB else 'FAIL'} ocimirror peak RSS {rss:.1f} MiB (< {RSS_BAR_MIB:g})"
    )
    if not all(r.ok for r in runs):
        out.append("FAIL some runs failed or left the destination incomplete")
    return out


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="cold copies per tool (default 3)")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of tools")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a `src` directory of another ocimirror (`git archive REV src | tar -x -C DIR`):"
        " also run it, as tool `before`",
    )
    p.add_argument("--json", type=Path, help="also write the raw runs here")
    p.add_argument("--profile", type=Path, help="profile one more ocimirror run with py-spy here")
    p.add_argument("--timeout", type=float, default=600.0, help="kill a run after this long")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Seed, run the rounds, print the report; 0 whatever the verdicts."""
    args = parse_args(argv)
    tools = [t for t in args.tools.split(",") if t and (t != "before" or args.baseline)]
    if args.baseline and "before" not in tools:
        tools.insert(1, "before")
    if unknown := set(tools) - set(TOOLS):
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))} (known: {', '.join(TOOLS)})")
    corpus = CORPORA["large"]
    workdir = Path(tempfile.mkdtemp(prefix="ocimirror-bigblobs-"))
    skopeo = Skopeo(workdir / "skopeo")
    src = LocalRegistry(workdir / "src", exact_counting=False)
    runs: list[Run] = []
    try:
        compile_sources(
            Path(__file__).resolve().parent.parent / "src", *filter(None, [args.baseline])
        )
        src.start()
        expected = Expected()
        start = time.perf_counter()
        seed_sync(src, corpus.repo, expected.record(corpus.make()))
        seed_sync(src, TINY, corpus_large_layers(layer_size=1024, seed="tiny"))
        print(
            f"seeded {corpus.description}: {len(expected.blobs)} blobs, "
            f"{expected.blob_bytes / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
        for round_ in range(1, args.rounds + 1):
            shift = (round_ - 1) % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                runs.append(
                    bench_one(
                        round_, tool, src, workdir, skopeo, expected, corpus.repo, args.timeout
                    )
                )
        print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)
        if args.profile:
            profile(src, workdir, skopeo, corpus.repo, args.profile, args.timeout)
    finally:
        src.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(report(runs))
    print()
    for line in verdicts(runs):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
