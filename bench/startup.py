"""How long `ocimirror` takes to start, beside the floors under it.

Run it as `.venv/bin/python bench/startup.py [--rounds N] [--json PATH]`. Every figure is
the best (lowest) of N runs (default 5): wall time from `time.perf_counter` around
spawning the process and reaping it, and the CPU time (user + system) the process used,
from `os.wait4`. CPU time moves less than wall time on a busy machine.

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


@dataclass(frozen=True)
class Timing:
    """One run: wall seconds and CPU seconds (user + system) of the child."""

    wall: float
    cpu: float


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
    return Timing(min(r.wall for r in runs), min(r.cpu for r in runs))


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
    print(f"{'what':<18} | {'wall s':>6} | {'- floor':>7} | {'CPU s':>6} | {'- floor':>7}")
    print(f"{'-' * 18}-+-{'-' * 6}-+-{'-' * 7}-+-{'-' * 6}-+-{'-' * 7}")
    for name, t in figures.items():
        if name in ("python -c pass", "copy rest"):
            above = f"{'':>7} | {t.cpu:6.3f} | {'':>7}"
        else:
            above = f"{t.wall - floor.wall:+7.3f} | {t.cpu:6.3f} | {t.cpu - floor.cpu:+7.3f}"
        print(f"{name:<18} | {t.wall:6.3f} | {above}")
    if args.json:
        out = {name: {"wall": t.wall, "cpu": t.cpu} for name, t in figures.items()}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
