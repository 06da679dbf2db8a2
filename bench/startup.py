"""How long `ocimirror` takes to start, beside the floors under it.

Run it as `.venv/bin/python bench/startup.py [--rounds N] [--json PATH]`. Every figure is
the best (lowest) of N runs (default 5), with the median wall time beside it: wall time
from `time.perf_counter` around spawning the process and reaping it, and the CPU time
(user + system) the process used, from `os.wait4`. CPU time moves less than wall time on
a busy machine.

- `python -c pass`: the floor, the interpreter with nothing imported (the venv's python).
- `import typer`: the floor of any typer command line.
- `ocimirror --help` and `ocimirror version`: commands that import only what they need.
- `copy's libraries`: importing what a `copy` cannot start without (asyncio, aiohttp, which
  builds a TLS context at import, typer and the pydantic it builds option validators
  with, structlog, rich's console): the floor under the next figure.
- `copy start-up`: from spawning `ocimirror copy SRC DST` to the first TCP connection it
  opens to the source registry. Everything before it (imports, argument parsing, the
  keychain, the event loop, the client) is start-up; everything after it is the copy.
  The registry here is a listener of this script on 127.0.0.1 that notes when the
  connection arrives; the process is then killed (its CPU time is up to the kill).
- `copy warm total`: the same command against a real registry (Debian's
  `docker-registry`), with the image already at the destination (one tag, nothing to
  copy: a tags list and a manifest HEAD at each side). `copy rest` is the total minus
  the start-up.
- `status's libraries`: what `ocimirror status` cannot start without (asyncio,
  SQLAlchemy's async engine with aiosqlite, typer with pydantic, yaml, rich's console
  and table): the floor under the next two figures.
- `status, empty db` and `status, big db`: `ocimirror status` of one mirror of 200
  repositories (one target) on a state database at the newest schema, empty, and
  holding 10,000 synced tags, 1,000 runs and 50,000 task results (issue 17's
  "dashboard and status under 0.5 s" database; written by this script, no registry).
- `sync's libraries`: the same plus aiohttp and structlog, what a one-shot `ocimirror
  sync` cannot start without.

The processes run with a private HOME, so no docker config of the host is read, and with
bytecode caching on (PYTHONDONTWRITEBYTECODE unset, the caches under a private
PYTHONPYCACHEPREFIX): an installed wheel has its bytecode compiled, and compiling every
module of an editable install at each start costs what no user pays.
Each figure's first run, which writes those caches, is not counted. The exit status is
0: this is a report.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocimirror.testkit.images import make_image
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed_sync

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
OCIMIRROR = ROOT / ".venv" / "bin" / "ocimirror"


LIBRARIES = "import asyncio, aiohttp, structlog, typer, typer._adapters, rich.console, rich.markup"
STATUS_LIBRARIES = (
    "import asyncio, sqlalchemy.ext.asyncio, sqlalchemy.dialects.sqlite, aiosqlite, typer,"
    " typer._adapters, pydantic, yaml, rich.console, rich.table"
)
SYNC_LIBRARIES = f"{STATUS_LIBRARIES}, aiohttp, structlog"

#: The big state database of `status, big db`: issue 17's 10,000 tags and 1,000 runs.
REPOS = [f"scale/r{i:03}" for i in range(200)]
TAGS = [f"t{i:02}" for i in range(50)]
RUNS = 1000


def status_config(path: Path) -> Path:
    """One on-demand mirror of `REPOS` to one target; no registry is ever asked."""
    sources = "".join(f"      - 127.0.0.1:9/{repo}\n" for repo in REPOS)
    path.write_text(
        "mirrors:\n  - name: scale\n    source:\n"
        f"{sources}    targets: [127.0.0.1:9/mirror]\n    schedule: 0\n"
    )
    return path


async def _fill(url: str | None, empty: str) -> None:
    """Create both databases at the newest schema; fill `url` with tags, runs and results."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert, select

    from ocimirror.state.db import StateDB
    from ocimirror.state.schema import runs, synced, task_results

    async with StateDB(empty):
        pass
    async with StateDB(str(url)) as db, db.engine.begin() as conn:
        end = datetime.now(UTC)
        digest = "sha256:" + "1" * 64
        await conn.execute(
            insert(synced),
            [
                {
                    "mirror": "scale",
                    "dest_ref": f"127.0.0.1:9/mirror/{repo}:{tag}",
                    "source_ref": f"127.0.0.1:9/{repo}:{tag}",
                    "source_digest": digest,
                    "target_digest": digest,
                    "synced_at": end,
                }
                for repo in REPOS
                for tag in TAGS
            ],
        )
        started = [end - timedelta(hours=RUNS - i) for i in range(RUNS)]
        await conn.execute(
            insert(runs),
            [
                {
                    "mirror": "scale",
                    "trigger": "schedule",
                    "status": "ok" if i % 10 else "partial",
                    "started_at": at,
                    "finished_at": at + timedelta(seconds=30),
                    "unchanged": len(REPOS) * len(TAGS),
                    "error": None if i % 10 else "1 failed",
                }
                for i, at in enumerate(started)
            ],
        )
        ids = (await conn.execute(select(runs.c.id))).scalars().all()
        results = [
            {
                "run_id": run_id,
                "mirror": "scale",
                "target": f"127.0.0.1:9/mirror/{REPOS[n % len(REPOS)]}",
                "source_ref": f"127.0.0.1:9/{REPOS[n % len(REPOS)]}:{tag}",
                "dest_ref": f"127.0.0.1:9/mirror/{REPOS[n % len(REPOS)]}:{tag}",
                "reason": "unchanged",
                "status": "unchanged",
                "finished_at": end,
            }
            for n, run_id in enumerate(ids)
            for tag in TAGS
        ]
        for start in range(0, len(results), 5000):
            await conn.execute(insert(task_results), results[start : start + 5000])


def status_databases(workdir: Path) -> tuple[Path, str, str]:
    """The config, and the URLs of the big and the empty state database."""
    import asyncio

    big = f"sqlite:///{workdir / 'big.state.db'}"
    empty = f"sqlite:///{workdir / 'empty.state.db'}"
    asyncio.run(_fill(big, empty))
    return status_config(workdir / "status.yaml"), big, empty


@dataclass(frozen=True)
class Timing:
    """One run: wall seconds and CPU seconds (user + system) of the child."""

    wall: float
    cpu: float
    #: The median wall time of the runs `best` kept the lowest of (else the wall time).
    median: float | None = None


def reap(proc: subprocess.Popen[bytes], start: float) -> tuple[int, Timing]:
    """Wait for `proc`; its exit status and timing (wall from `start`)."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, Timing(wall, usage.ru_utime + usage.ru_stime)


def timed(command: Sequence[str], env: dict[str, str]) -> Timing:
    """Run `command` to its end; it must exit 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    code, timing = reap(proc, start)
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}: {err[-800:]!r}")
    return timing


def time_to_first_connection(env: dict[str, str]) -> Timing:
    """From spawning `ocimirror copy` to its first connection to the source."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        listener.settimeout(60)
        arrived: list[float] = []

        def accept() -> None:
            conn, _ = listener.accept()
            arrived.append(time.perf_counter())
            conn.close()

        waiter = threading.Thread(target=accept)
        waiter.start()
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(OCIMIRROR), "copy", "--quiet", f"{host}/bench/a:1", f"{host}/bench/b:1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            waiter.join()
        finally:
            proc.kill()
            _, timing = reap(proc, start)
        if not arrived:
            raise SystemExit("ocimirror copy never connected to the source")
        return Timing(arrived[0] - start, timing.cpu)


def best(rounds: int, measure: Callable[[], Timing]) -> Timing:
    """The lowest wall and CPU times of `rounds` calls of `measure`, after one not counted.

    The first call writes the bytecode caches (see `main`) and warms the page cache.
    """
    measure()
    runs = [measure() for _ in range(rounds)]
    walls = sorted(r.wall for r in runs)
    return Timing(walls[0], min(r.cpu for r in runs), walls[len(walls) // 2])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs per figure (best is kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rounds: int = args.rounds
    with tempfile.TemporaryDirectory(prefix="ocimirror-startup-") as work:
        workdir = Path(work)
        home = workdir / "home"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}
        env.pop("REGISTRY_AUTH_FILE", None)
        # Measure what an installed ocimirror costs: an installed wheel has its bytecode
        # compiled, while an editable install under PYTHONDONTWRITEBYTECODE compiles
        # every module of src/ at every start. The caches go to the work dir.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        figures: dict[str, Timing] = {}

        def measure(name: str, command: list[str]) -> None:
            figures[name] = best(rounds, lambda: timed(command, env))

        measure("python -c pass", [str(PYTHON), "-c", "pass"])
        measure("import typer", [str(PYTHON), "-c", "import typer"])
        measure("ocimirror --help", [str(OCIMIRROR), "--help"])
        measure("ocimirror version", [str(OCIMIRROR), "version"])
        measure("copy's libraries", [str(PYTHON), "-c", LIBRARIES])
        measure("status's libraries", [str(PYTHON), "-c", STATUS_LIBRARIES])
        config, big, empty = status_databases(workdir)
        status = [str(OCIMIRROR), "status", "-c", str(config), "--state"]
        measure("status, empty db", [*status, empty])
        measure("status, big db", [*status, big])
        measure("sync's libraries", [str(PYTHON), "-c", SYNC_LIBRARIES])
        figures["copy start-up"] = best(rounds, lambda: time_to_first_connection(env))
        registry = LocalRegistry(workdir / "registry", exact_counting=False).start()
        try:
            seed_sync(registry, "bench/a", [("1", make_image(layers=1, seed="startup"))])
            copy = [str(OCIMIRROR), "copy", "--quiet"]
            copy += [f"{registry.host}/bench/a:1", f"{registry.host}/bench/b:1"]
            timed(copy, env)  # the cold copy: from here on the image is there
            measure("copy warm total", copy)
        finally:
            registry.stop()
        total, start = figures["copy warm total"], figures["copy start-up"]
        figures["copy rest"] = Timing(total.wall - start.wall, total.cpu - start.cpu)
    floor = figures["python -c pass"]
    print(f"best of {rounds}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 minutes) at the end")
    head = f"{'what':<18} | {'wall s':>6} | {'median':>6} | {'- floor':>7} | {'CPU s':>6}"
    print(f"{head} | {'- floor':>7}")
    print(f"{'-' * 18}-+-{'-' * 6}-+-{'-' * 6}-+-{'-' * 7}-+-{'-' * 6}-+-{'-' * 7}")
    for name, t in figures.items():
        if name in ("python -c pass", "copy rest"):
            above = f"{'':>7} | {t.cpu:6.3f} | {'':>7}"
        else:
            above = f"{t.wall - floor.wall:+7.3f} | {t.cpu:6.3f} | {t.cpu - floor.cpu:+7.3f}"
        median = f"{t.median:6.3f}" if t.median is not None else f"{'':>6}"
        print(f"{name:<18} | {t.wall:6.3f} | {median} | {above}")
    if args.json:
        out = {
            name: {"wall": t.wall, "cpu": t.cpu, "wall_median": t.median}
            for name, t in figures.items()
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
