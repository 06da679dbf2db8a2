"""Exit paths of the CLI: every HTTP session closed, every missing optional package named.

Each test runs `ocimirror` as a subprocess and reads its stderr, where asyncio reports a
session left open (`Unclosed client session`) and Python a traceback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from ocimirror.extras import MissingExtra, require
from ocimirror.reference import Reference
from ocimirror.testkit.command import ocimirror_async
from ocimirror.testkit.front import Front, Intercept, kind_of, registry_error
from ocimirror.testkit.images import make_index
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed
from ocimirror.transfer.engine import run_copies


async def one_child_failing(registry: LocalRegistry) -> tuple[Intercept, asyncio.Event]:
    """Seed `app:multi`, an index of two children; return an intercept under which the
    first child's last blob is unknown (404) and the second child's blobs stay in flight
    until the event is set."""
    index = make_index(("linux/amd64", "linux/arm64/v8"), layer_size=4096, seed="exit")
    await seed(registry, "app", [("multi", index)])
    broken = index.children[0].manifest.blobs[-1].digest
    held = {b.digest for b in index.children[1].manifest.blobs}
    release = asyncio.Event()

    async def misbehave(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        if request.method == "GET" and kind_of(request) == "blob":
            digest = request.path.rsplit("/", 1)[-1]
            if digest == broken:
                return registry_error(404, "BLOB_UNKNOWN")
            if digest in held:
                await release.wait()
        return None

    return misbehave, release


async def test_failed_child_with_transfers_in_flight_closes_sessions(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """One child of an index fails while the other child's blobs are still in flight: the
    run ends with the image failed, and the transfers left behind are stopped before the
    stores close (they used to reopen a session after it, never closed: `Unclosed client
    session` at exit)."""
    misbehave, release = await one_child_failing(registry)
    async with Front(registry, misbehave).running() as front:
        code, _, stderr = await ocimirror_async(
            "copy", f"{front.host}/app:multi", f"oci:{tmp_path / 'out'}:multi"
        )
        release.set()
    assert code == 1, stderr
    assert "app:multi" in stderr
    assert "BLOB_UNKNOWN" in stderr or "not found" in stderr.lower() or "unknown" in stderr
    assert "Unclosed" not in stderr
    assert "Traceback" not in stderr


async def test_run_ends_with_no_transfer_left_running(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """The same failure in process: when `run_copies` returns, no blob or manifest
    transfer of the failed image is still running (the stores are closed by then, so one
    still running would reopen a session that nobody closes)."""
    misbehave, release = await one_child_failing(registry)
    async with Front(registry, misbehave).running() as front:
        summary = await run_copies(
            [
                (
                    Reference.parse(f"{front.host}/app:multi"),
                    Reference.parse(f"oci:{tmp_path / 'out'}:multi"),
                )
            ]
        )
        left = [
            t
            for t in asyncio.all_tasks()
            if not t.done() and t.get_coro().__qualname__.startswith("Copier.")  # type: ignore[union-attr]
        ]
        release.set()
    assert [r.status for r in summary.results] == ["failed"]
    assert not left, left


#: Runs the CLI with asyncpg made unimportable, as on an install without the extra.
WITHOUT_ASYNCPG = (
    "import runpy, sys; sys.modules['asyncpg'] = None; sys.argv[0] = 'ocimirror'; "
    "runpy.run_module('ocimirror', run_name='__main__')"
)


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--state", "postgresql://mirror@127.0.0.1:1/mirror"],
        ["serve", "--state", "postgres://mirror@127.0.0.1:1/mirror"],
    ],
)
def test_missing_asyncpg_is_one_line(args: list[str]) -> None:
    """A PostgreSQL state database on a plain install: one line naming the extra, exit 2."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_ASYNCPG, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: a PostgreSQL state database needs the optional package asyncpg:"
        " pip install 'ocimirror[postgres]'"
    ]


def test_require_names_the_extra() -> None:
    with pytest.raises(MissingExtra) as caught:
        require("ocimirror_no_such_package", "demo", "the demo feature")
    assert str(caught.value) == (
        "the demo feature needs the optional package ocimirror_no_such_package:"
        " pip install 'ocimirror[demo]'"
    )
    assert require("json", "none", "JSON").loads("1") == 1


#: Runs the console script's `main` with an exit handler that says whether it ran.
WITH_ATEXIT = (
    "import atexit, sys; atexit.register(lambda: print('FINALIZED', file=sys.stderr)); "
    "from ocimirror.__main__ import main; sys.argv[0] = 'ocimirror'; main()"
)


@pytest.mark.parametrize(("args", "code"), [(["copy", "--help"], 0), (["copy"], 2)])
def test_the_command_ends_without_finalization_and_loses_no_output(
    args: list[str], code: int
) -> None:
    """The console script ends with `os._exit` once the command has finished (native
    threads, obstore's runtime, made interpreter finalization abort now and then): its
    exit status and every line it wrote are kept, through a pipe, and no exit handler runs."""
    done = subprocess.run(
        [sys.executable, "-c", WITH_ATEXIT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert "FINALIZED" not in done.stderr
    if code == 0:
        assert "Usage: ocimirror copy" in done.stdout
        last = done.stdout.rstrip().splitlines()[-1]
        assert last.startswith(("╰", "+", "└")), last  # the page's closing border: whole
    else:
        assert "Missing argument" in done.stderr
