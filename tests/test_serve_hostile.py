"""`ocimirror serve` against the requests of issue 11: each one sent as the attacker did.

Bodies that arrive in pieces (with a length or chunked), bodies too large, too deep or with
too many entries, and finished jobs piling up in memory. The service runs as a real process
on loopback; raw sockets send what urllib would not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocimirror.service.jobs import JobManager
from ocimirror.service.models import MirrorEntry, MirrorRequest
from ocimirror.sync.state import StateDB
from ocimirror.testkit.registry import LocalRegistry
from test_serve import Server

EVIL = "http://evil.example"
PLAIN = {"Content-Type": "text/plain"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers (`ocimirror serve ARGS`) that are stopped at the end of the test."""
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        started.append(Server(tmp_path, *args, env=env))
        return started[-1]

    yield start
    for s in started:
        s.kill()


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    """A service as started by hand: no tokens, loopback only."""
    return server_factory()


def copy_body(src: LocalRegistry, dst: LocalRegistry, repo: str) -> bytes:
    """A request copying `lib/app:1` from `src` to `dst`'s `repo`."""
    entry = {"src": f"{src.host}/lib/app:1", "dst": f"{dst.host}/{repo}:1"}
    return json.dumps({"mirrors": [entry]}).encode()


# --------------------------------------------------------------------------- bodies


async def exchange(
    port: int, path: str, head: dict[str, str], pieces: list[bytes]
) -> tuple[int, bytes]:
    """POST `pieces` as separate writes on a raw connection; the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in head.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        for piece in pieces:
            # Apart in time only so that they arrive as separate segments (as from curl);
            # the outcome must be the same however they arrive.
            await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(60):
            head_lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in head_lines
                if line.lower().startswith("content-length:")
            )
            body = await reader.readexactly(length)
    finally:
        writer.close()
    return int(head_lines[0].split()[1]), body


def chunked(pieces: list[bytes]) -> list[bytes]:
    """Each piece as one chunk, then the last chunk."""
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]


async def test_a_body_arriving_in_pieces_is_read_whole(server: Server) -> None:
    body = b'{"mirrors": [],\n "parallelism": 5, "all_tags": false}'
    pieces = [body[:10], body[10:22], body[22:]]
    for path in ("/", "/api/v1/jobs"):
        sized = {**JSON, "Content-Length": str(len(body))}
        status, answer = await exchange(server.port, path, sized, pieces)
        assert status in (200, 202), (path, answer)
        status, answer = await exchange(
            server.port, path, {**JSON, "Transfer-Encoding": "chunked"}, chunked(pieces)
        )
        assert status in (200, 202), (path, answer)
    status, answer = await exchange(server.port, "/", sized, pieces)
    assert answer == b'{"ok":true}\n'


def test_a_480_kb_body_is_accepted(server: Server) -> None:
    # Valid only if read to its end: the closing brackets come last.
    body = b'{"mirrors": [' + b" " * (480 * 1024) + b"]}"
    assert server.call("POST", "/", body).body == b'{"ok":true}\n'
    assert server.call("POST", "/api/v1/jobs", body).status == 202


async def test_over_1_mb_is_413_however_it_is_sent(server: Server) -> None:
    # A Content-Length over the limit: refused before any of the body is sent.
    status, answer = await exchange(server.port, "/", {**JSON, "Content-Length": "5242880"}, [])
    assert (status, answer) == (413, b"Request body must not be larger than 1MB\n")
    # 5 MB chunked: refused once 1 MB is read, not cut there and parsed.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(head.encode())
    answered = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    chunk = b'{"mirrors": [' + b" " * (64 * 1024 - 13)
    sent = 0
    try:
        while sent < 5 << 20 and not answered.done():
            writer.write(chunked([chunk])[0])
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)  # let the answer be read as soon as it comes
    except ConnectionError:
        pass  # the server stopped reading: its answer is what counts
    try:
        async with asyncio.timeout(60):
            status_line = (await answered).split(b"\r\n", 1)[0]
            rest = await reader.read(4096)
    finally:
        writer.close()
    assert status_line.split()[1] == b"413"
    assert b"must not be larger than 1MB" in rest


def test_deep_nesting_is_a_400_without_a_traceback(server: Server) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = server.call("POST", "/", deep)
    assert answer.status == 400
    assert answer.body == b"Request body contains JSON nested more than 64 deep (at position 65)\n"
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    nested = b'{"mirrors": [' + b"[" * 70_000 + b"]" * 70_000 + b"]}"
    job = server.call("POST", "/api/v1/jobs", nested)
    assert job.status == 400
    assert "nested more than 64 deep" in job.json()["error"]
    # Nesting inside strings is text, not depth.
    text = b'{"mirrors": [], "semver": "' + b"[" * 200 + b'"}'
    assert server.call("POST", "/", text).body == b'{"ok":true}\n'
    log = server.text()
    assert "Traceback" not in log
    assert "RecursionError" not in log


def test_too_many_entries_are_refused_and_start_nothing(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory()
    entries = [{"src": f"bad ref {i}", "dst": "x"} for i in range(10_000)]
    body = json.dumps({"mirrors": entries}).encode()
    answer = server.call("POST", "/", body)
    assert answer.status == 413
    assert answer.body == (
        b"Request body has 10000 mirrors entries: at most 1000 are accepted in one"
        b" request (api.max_entries)\n"
    )
    assert server.call("POST", "/api/v1/jobs", body).status == 413
    assert server.call("GET", "/api/v1/jobs").json()["jobs"] == []
    # The limit is the config's.
    config = tmp_path / "small.yaml"
    config.write_text("api:\n  max_entries: 2\n")
    small = server_factory("-c", str(config))
    three = json.dumps({"mirrors": entries[:3]}).encode()
    assert small.call("POST", "/api/v1/jobs", three).status == 413
    assert (
        small.call("POST", "/api/v1/jobs", json.dumps({"mirrors": entries[:2]}).encode()).status
        == 202
    )


# --------------------------------------------------------------------------- memory


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[JobManager]:
    """A started job manager on a SQLite file, closed at teardown."""
    async with StateDB(f"sqlite:///{tmp_path}/state.db") as state:
        jobs = JobManager(state)
        await jobs.start()
        yield jobs
        await jobs.close()


def invalid(n: int, tag: str) -> MirrorRequest:
    """A request of `n` entries that cannot parse (each fails at once)."""
    return MirrorRequest(mirrors=[MirrorEntry(src=f"bad ref {tag} {i}", dst="x") for i in range(n)])


async def test_finished_jobs_are_not_kept_in_memory(manager: JobManager) -> None:
    ids = []
    for k in range(40):
        view, _ = await manager.submit(invalid(100, str(k)))
        ids.append(view.id)
        await manager.wait(view.id)
        assert manager.held() == 0  # the finished job was let go
    for job_id in (ids[0], ids[-1]):  # still answered, from the database
        job = await manager.get(job_id)
        assert job is not None
        assert job.state == "failed"
        assert job.progress.done == job.progress.total == 100
        assert len(job.errors) == 100


async def test_a_job_whose_last_write_failed_stays_true(
    manager: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    update_job = manager.state.update_job

    async def fails_when_final(job_id: str, **kwargs: Any) -> None:
        if kwargs["state"] == "failed":
            raise OSError("disk full")
        await update_job(job_id, **kwargs)

    monkeypatch.setattr(manager.state, "update_job", fails_when_final)
    view, _ = await manager.submit(invalid(1, "w"))
    done = await manager.wait(view.id)
    assert done.state == "failed"  # not the "running" the database still says
    assert manager.held() == 1
