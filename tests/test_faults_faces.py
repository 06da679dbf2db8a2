"""`copy`, `sync`, `run` and `serve` stopped mid-run, a registry killed mid-run, and `run`
and `serve` under the seeded TCP fault injector.

Stopped mid-run: every run copies ten images into a registry behind an `UploadGate`: once
three blob uploads have completed, the gate holds every later request to the target, so
the test knows (from an event, not a sleep) that the run is mid-way and stays there. Then
the process under test (`copy`, `sync`, `serve` with a job, `run`) is killed or stopped,
or the target registry is killed and started again on the same port and storage. After
each: every tag at the target names content that is there; the state database has no run
or job left "running"; the rerun completes and uploads no blob that was already complete
(counted in the registry's access log). The bounded form stops `copy` with SIGTERM and
`serve` with SIGKILL (`sync` both ways); `OCIMIRROR_SOAK=1` adds the other signal to each,
and the `run` daemon killed and started again.

Under the injector (half the connections faulty, on both sides, all seven modes): `run`
records in the state database exactly the failures it logs and no success for a failed
copy (each synced row is the tag's digest at the target); `serve`'s Cloud Run answer is
`{"ok":true}` or names each failed entry, and its job records the same; the rerun
completes. One seed in the bounded form, ten with `OCIMIRROR_SOAK=1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocimirror.state.db import StateDB
from ocimirror.testkit.command import Background, ocimirror_async, ocimirror_command
from ocimirror.testkit.faults import FaultInjector, http_faults
from ocimirror.testkit.front import Front
from ocimirror.testkit.gate import UploadGate
from ocimirror.testkit.images import SampleImage, corpus_faults
from ocimirror.testkit.invariants import assert_sound, check_store, complete_blobs
from ocimirror.testkit.postgres import LocalPostgres
from ocimirror.testkit.registry import LocalRegistry, free_port
from ocimirror.testkit.seeding import seed, store_for

pytestmark = pytest.mark.faults

SOAK = os.environ.get("OCIMIRROR_SOAK", "") not in ("", "0")
KILL = pytest.param(signal.SIGKILL, id="SIGKILL")
TERM = pytest.param(signal.SIGTERM, id="SIGTERM")

#: How long any one wait may take before the test fails (a hang, not a measure).
PATIENCE = 60.0


def corpus() -> list[tuple[str, SampleImage]]:
    """Nine small images sharing two layers, and one multi-arch index: ten tags."""
    return corpus_faults(seed="stop")


WANTED = {b.digest for _, image in corpus() for b in image.all_blobs()}


async def complete_at(dst: LocalRegistry, repo: str) -> set[str]:
    """The corpus's blobs that are whole at the target now."""
    store = store_for(dst)
    try:
        return await complete_blobs(store, repo, WANTED)
    finally:
        await store.close()


def uploaded_since(dst: LocalRegistry, mark: int) -> set[str]:
    """The digests of the blob uploads the registry completed since `mark`."""
    return {
        r.query.split("digest=", 1)[1].split("&", 1)[0].replace("%3A", ":")
        for r in dst.requests(since=mark)
        if r.method == "PUT" and r.kind == "upload" and "digest=" in r.query and r.status == 201
    }


async def assert_target_sound(dst: LocalRegistry, repo: str, tags: int | None = None) -> None:
    """No tag at the target names content that is missing or wrong."""
    store = store_for(dst)
    try:
        await assert_sound(store, repo, tags)
    finally:
        await store.close()


async def spawn(*args: str) -> asyncio.subprocess.Process:
    """Start `ocimirror ARGS`, its output piped."""
    return await asyncio.create_subprocess_exec(
        *ocimirror_command(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )


async def start_held(gate: UploadGate, *args: str) -> asyncio.subprocess.Process:
    """Start `ocimirror ARGS` and return once the gate holds its run mid-way."""
    proc = await spawn(*args)
    reached = asyncio.ensure_future(gate.reached.wait())
    exited = asyncio.ensure_future(proc.wait())
    await asyncio.wait({reached, exited}, timeout=PATIENCE, return_when=asyncio.FIRST_COMPLETED)
    reached.cancel()
    if not gate.reached.is_set():
        _, err = await proc.communicate()
        raise AssertionError(f"the run never reached the gate: {err.decode()[-3000:]}")
    exited.cancel()
    return proc


def assert_clean_stop(code: int, stderr: str, sig: int) -> None:
    """SIGKILL leaves what it leaves; SIGTERM stops with 143 and one line, no traceback."""
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    assert code == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr
    assert "Traceback" not in stderr
    assert "Unclosed" not in stderr


# -- copy -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [KILL, TERM] if SOAK else [TERM])
async def test_copy_stopped_mid_run_then_rerun(registry_factory: Any, sig: signal.Signals) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    await seed(src, "app", corpus())
    gate = UploadGate(after=3)
    async with Front(dst, gate).running() as front:
        proc = await start_held(gate, "copy", "--all-tags", f"{src.host}/app", f"{front.host}/app")
        proc.send_signal(sig)
        _, err = await proc.communicate()
        assert proc.returncode is not None
        assert_clean_stop(proc.returncode, err.decode(), sig)
        gate.release()
    await assert_target_sound(dst, "app")
    complete = await complete_at(dst, "app")
    assert complete, "stopped before any blob was complete"
    assert complete != WANTED, "stopped after the end"
    mark = dst.mark()
    code, _, err = await ocimirror_async("copy", "--all-tags", f"{src.host}/app", f"{dst.host}/app")
    assert code == 0, err
    assert not uploaded_since(dst, mark) & complete, "a complete blob was uploaded again"
    await assert_target_sound(dst, "app", tags=10)


# -- sync -------------------------------------------------------------------------------


def sync_config(path: Path, src: LocalRegistry, target: str, schedule: str = "") -> Path:
    lines = ["mirrors:", "  - name: app", f"    source: {src.host}/app", f"    targets: [{target}]"]
    if schedule:
        lines.append(f"    schedule: {schedule}")
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_database_whole(state: str) -> None:
    """SQLite's own check of a state database a process was killed writing to."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(state.removeprefix("sqlite:///"))) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def run_statuses(state: str, mirror: str = "app") -> list[str]:
    """The mirror's runs, newest first."""
    async with StateDB(state) as db:
        return [r.status for r in await db.runs(mirror, limit=100)]


@pytest.mark.parametrize("sig", [KILL, TERM])
async def test_sync_stopped_mid_run_leaves_no_run_running(
    registry_factory: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    await seed(src, "app", corpus())
    state = f"sqlite:///{tmp_path}/state.db"
    gate = UploadGate(after=3)
    async with Front(dst, gate).running() as front:
        config = sync_config(tmp_path / "mirror.yaml", src, f"{front.host}/app")
        proc = await start_held(gate, "sync", "-c", str(config), "--state", state)
        proc.send_signal(sig)
        _, err = await proc.communicate()
        assert proc.returncode is not None
        assert_clean_stop(proc.returncode, err.decode(), sig)
        # SIGTERM: recorded at once. SIGKILL: nothing could be, until the next start.
        expected = "interrupted" if sig == signal.SIGTERM else "running"
        assert_database_whole(state)
        assert await run_statuses(state) == [expected]
        await assert_target_sound(dst, "app")
        complete = await complete_at(dst, "app")
        assert complete, "stopped before any blob was complete"
        assert complete != WANTED, "stopped after the end"
        gate.release()
        mark = dst.mark()
        code, _, err = await ocimirror_async("sync", "-c", str(config), "--state", state)
        assert code == 0, err
    assert await run_statuses(state) == ["ok", "interrupted"]
    assert not uploaded_since(dst, mark) & complete, "a complete blob was uploaded again"
    await assert_target_sound(dst, "app", tags=10)


async def test_sync_with_its_postgresql_killed_mid_run_records_no_false_success(
    registry_factory: Any, tmp_path: Path
) -> None:
    """The PostgreSQL state database SIGKILLed (postmaster and backends) while a sync pass
    is mid-way, then started again on its data: the pass fails in one clear line, no
    traceback; the next pass marks the run it left `running` as `interrupted`, completes,
    and every `synced` row is the tag's digest at the target."""
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    await seed(src, "app", corpus())
    # Commits durable against a killed server (the testkit's default trades that for speed).
    with LocalPostgres(settings={"synchronous_commit": "on"}) as pg:
        state = pg.url
        gate = UploadGate(after=3)
        async with Front(dst, gate).running() as front:
            config = sync_config(tmp_path / "mirror.yaml", src, f"{front.host}/app")
            proc = await start_held(gate, "sync", "-c", str(config), "--state", state)
            await asyncio.to_thread(pg.crash)
            gate.release()
            _, raw = await proc.communicate()
            err = raw.decode()
            assert proc.returncode == 1, err
            assert "error: the state database failed during the pass" in err
            assert "Traceback" not in err, err
            await asyncio.to_thread(pg.restart)
            assert await run_statuses(state) == ["running"]  # nothing could record its end
            await assert_target_sound(dst, "app")
            code, _, err = await ocimirror_async("sync", "-c", str(config), "--state", state)
            assert code == 0, err
        assert await run_statuses(state) == ["ok", "interrupted"]
        await assert_target_sound(dst, "app", tags=10)
        store = store_for(dst)
        try:
            async with StateDB(state) as db:
                synced = await db.synced("app")
                assert len(synced) == 10, synced
                for dest, row in synced.items():
                    desc = await store.head_manifest("app", dest.rsplit(":", 1)[-1])
                    assert desc is not None, dest
                    assert desc.digest == row.target_digest, dest
        finally:
            await store.close()


@pytest.mark.soak  # sync's SIGKILL test covers the bounded form
async def test_run_daemon_killed_mid_run_finishes_it_on_restart(
    registry_factory: Any, tmp_path: Path
) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    await seed(src, "app", corpus())
    state = f"sqlite:///{tmp_path}/state.db"
    gate = UploadGate(after=3)
    async with Front(dst, gate).running() as front:
        config = sync_config(tmp_path / "mirror.yaml", src, f"{front.host}/app", "24h")
        proc = await start_held(gate, "run", "-c", str(config), "--state", state)
        proc.kill()
        await proc.communicate()
        assert await run_statuses(state) == ["running"]
        complete = await complete_at(dst, "app")
        gate.release()
        mark = dst.mark()
        daemon = Background(["run", "-c", str(config), "--state", state], tmp_path / "daemon.log")
        try:
            # The last run did not finish: the restarted daemon runs the mirror at once.
            await asyncio.to_thread(
                daemon.wait_ready, lambda: "run finished" in daemon.text(), "the rerun"
            )
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    assert "runs left running by a previous process marked interrupted" in daemon.text()
    assert await run_statuses(state) == ["ok", "interrupted"]
    assert not uploaded_since(dst, mark) & complete, "a complete blob was uploaded again"
    await assert_target_sound(dst, "app", tags=10)


# -- serve ------------------------------------------------------------------------------


class Server(Background):
    """`ocimirror serve` on a free port, API jobs allowed to reach loopback registries."""

    def __init__(self, workdir: Path, state: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "OCIMIRROR_API_TOKENS"}
        env["PORT"] = str(self.port)
        super().__init__(
            ["serve", "--state", state, "--allow-private-networks"],
            workdir / f"serve-{self.port}.log",
            env,
        )
        self.wait_ready(lambda: self.call("GET", "/readyz")[0] == 200, "serve")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=PATIENCE) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()


@pytest.mark.parametrize("sig", [KILL, TERM] if SOAK else [KILL])
async def test_serve_stopped_with_a_job_in_flight(
    registry_factory: Any, tmp_path: Path, servers: list[Server], sig: signal.Signals
) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    images = corpus()
    await seed(src, "app", images)
    state = f"sqlite:///{tmp_path}/serve.state.db"
    gate = UploadGate(after=3)
    async with Front(dst, gate).running() as front:
        body = mirrors_body(src.host, front.host, images)
        server = await asyncio.to_thread(Server, tmp_path, state)
        servers.append(server)
        status, job = await asyncio.to_thread(server.call, "POST", "/api/v1/jobs", body)
        assert status == 202, job
        await asyncio.wait_for(gate.reached.wait(), PATIENCE)
        code = await asyncio.to_thread(server.stop, sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), server.text()
        assert_database_whole(state)
        assert "Traceback" not in server.text()
        await assert_target_sound(dst, "app")
        complete = await complete_at(dst, "app")
        gate.release()
        again = await asyncio.to_thread(Server, tmp_path, state)
        servers.append(again)
        _, stopped = await asyncio.to_thread(again.call, "GET", f"/api/v1/jobs/{job['id']}")
        assert stopped["state"] == "interrupted"
        unfinished = [e for e in stopped["entries"] if e["status"] in ("pending", "running")]
        assert not unfinished  # a stopped job's entries are settled, not left open
        async with StateDB(state) as db:
            assert not [j for j in await db.list_jobs() if j.state in ("queued", "running")]
        mark = dst.mark()
        # The Cloud Run mirror's contract: {"ok": true} once every entry is there.
        status, answer = await asyncio.to_thread(again.call, "POST", "/", body)
        assert (status, answer) == (200, {"ok": True}), answer
    assert not uploaded_since(dst, mark) & complete, "a complete blob was uploaded again"
    await assert_target_sound(dst, "app", tags=10)


# -- a registry killed and started again ---------------------------------------------------


async def test_target_registry_killed_and_restarted_mid_copy(registry_factory: Any) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    await seed(src, "app", corpus())
    gate = UploadGate(after=3)
    async with Front(dst, gate).running() as front:
        proc = await start_held(
            gate, "copy", "--all-tags", "--json", f"{src.host}/app", f"{front.host}/app"
        )
        dst.kill()  # mid-run, with uploads under way
        gate.release()  # from now on the front answers 502 until the registry is back
        await asyncio.wait_for(gate.down_seen.wait(), PATIENCE)
        await asyncio.to_thread(dst.start)
        out, err = await proc.communicate()
    stderr = err.decode()
    assert "Traceback" not in stderr
    summary = json.loads(out)
    failed = [r for r in summary["images"] if r["status"] == "failed"]
    # It retried through the outage, or failed cleanly, naming each image it could not copy.
    assert proc.returncode == (0 if not failed else 3 if len(failed) < 10 else 1), stderr
    for image in failed:
        assert image["error"]
        assert image["source"].rsplit("/", 1)[-1] in stderr
    await assert_target_sound(dst, "app")
    complete = await complete_at(dst, "app")
    mark = dst.mark()
    code, _, err2 = await ocimirror_async(
        "copy", "--all-tags", f"{src.host}/app", f"{dst.host}/app"
    )
    assert code == 0, err2
    assert not uploaded_since(dst, mark) & complete, "a complete blob was uploaded again"
    await assert_target_sound(dst, "app", tags=10)


# -- run and serve under the injector ------------------------------------------------------

SEEDS = list(range(1, 11)) if SOAK else [1]
#: Half of all connections are faulty, on each side.
FAULT_RATE = 0.5


def check_synced_true(
    walk_violations: list[str], synced: dict[str, Any], tags: dict[str, str]
) -> None:
    """Every success the state database records is the tag's digest at the target now."""
    assert not walk_violations, walk_violations
    for dest, row in synced.items():
        tag = dest.rsplit(":", 1)[-1]
        assert tags.get(tag) == row.target_digest, f"the state says {dest} was synced"


async def target_tags(dst: LocalRegistry, repo: str) -> dict[str, str]:
    """{tag: digest} at the target."""
    store = store_for(dst)
    try:
        out = {}
        for tag in await store.list_tags(repo):
            desc = await store.head_manifest(repo, tag)
            if desc is not None:
                out[tag] = desc.digest
        return out
    finally:
        await store.close()


@pytest.mark.parametrize("fault_seed", SEEDS)
async def test_run_daemon_under_faults_records_what_happened(
    registry_factory: Any, tmp_path: Path, fault_seed: int
) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    await seed(src, "app", corpus())
    state = f"sqlite:///{tmp_path}/state.db"
    async with (
        FaultInjector(src.port, seed=fault_seed, fault_rate=FAULT_RATE).running() as faulty_src,
        FaultInjector(dst.port, seed=-fault_seed, fault_rate=FAULT_RATE).running() as faulty_dst,
    ):
        config = tmp_path / "mirror.yaml"
        config.write_text(
            f"mirrors:\n  - name: app\n    source: {faulty_src.host}/app\n"
            f"    targets: [{faulty_dst.host}/app]\n    schedule: once\n"
        )
        daemon = Background(["run", "-c", str(config), "--state", state], tmp_path / "run.log")
        try:
            await asyncio.to_thread(
                daemon.wait_ready, lambda: "run finished" in daemon.text(), "the pass", PATIENCE
            )
            assert await asyncio.to_thread(daemon.stop) == 0
        finally:
            daemon.kill()
        assert sum(faulty_src.counts.values()) + sum(faulty_dst.counts.values()) > 0
    log = daemon.text()
    assert "Traceback" not in log
    async with StateDB(state) as db:
        [run] = await db.runs("app")
        synced = await db.synced("app")
    assert run.status in ("ok", "partial"), run
    failures = log.count("[warning  ] failure")
    assert run.failed == failures  # each failure the database counts is in the log
    assert failures <= 1
    tags = await target_tags(dst, "app")
    store = store_for(dst)
    try:
        walk = await check_store(store, "app")
    finally:
        await store.close()
    check_synced_true([str(v) for v in walk.violations], synced, tags)
    import sqlite3

    with contextlib.closing(sqlite3.connect(state.removeprefix("sqlite:///"))) as db:
        results = dict(db.execute("SELECT dest_ref, status FROM task_results").fetchall())
    failed = {ref for ref, status in results.items() if status == "failed"}
    assert not failed & set(synced), "a failed copy recorded as synced"
    assert len(failed) <= failures
    assert len(synced) == len(results) - len(failed)  # every other image is recorded synced


def mirrors_body(
    src_host: str, dst_host: str, images: list[tuple[str, SampleImage]]
) -> dict[str, Any]:
    """The Cloud Run mirror's POST body: each tag of `app` from `src_host` to `dst_host`."""
    return {
        "mirrors": [
            {"src": f"{src_host}/app:{tag}", "dst": f"{dst_host}/app:{tag}"} for tag, _ in images
        ]
    }


async def check_failed_entries(
    answer: dict[str, Any],
    body: dict[str, Any],
    images: list[tuple[str, SampleImage]],
    dst: LocalRegistry,
    state: str,
) -> dict[int, dict[str, Any]]:
    """`serve`'s answer to `body` is `{"ok":true}` or names each failed entry, and why;
    every entry not named is at the target, whole; the job's stored entries say the
    same. Return the failed entries by index."""
    failed = {e["index"]: e for e in answer.get("errors") or []}
    assert answer["ok"] is (not failed)
    for index, error in failed.items():
        entry = body["mirrors"][index]
        assert error["name"] == f"({entry['src']} to {entry['dst']})"
        assert error["error"]
    tags = await target_tags(dst, "app")
    for i, (tag, _) in enumerate(images):
        assert (tag in tags) or (i in failed)
    await assert_target_sound(dst, "app")
    async with StateDB(state) as db:
        [job] = await db.list_jobs()
    assert job.state == ("failed" if failed else "done")
    entries = (job.result or {})["entries"]
    assert {e["index"] for e in entries if e["status"] == "failed"} == set(failed)
    return failed


@pytest.mark.parametrize("fault_seed", SEEDS)
async def test_serve_under_faults_names_each_failed_entry(
    registry_factory: Any, tmp_path: Path, servers: list[Server], fault_seed: int
) -> None:
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    images = corpus()
    await seed(src, "app", images)
    state = f"sqlite:///{tmp_path}/serve.state.db"
    server = await asyncio.to_thread(Server, tmp_path, state)
    servers.append(server)
    async with (
        FaultInjector(src.port, seed=fault_seed, fault_rate=FAULT_RATE).running() as faulty_src,
        FaultInjector(dst.port, seed=-fault_seed, fault_rate=FAULT_RATE).running() as faulty_dst,
    ):
        body = mirrors_body(faulty_src.host, faulty_dst.host, images)
        status, answer = await asyncio.to_thread(server.call, "POST", "/", body)
        assert status == 200, answer
        assert sum(faulty_src.counts.values()) + sum(faulty_dst.counts.values()) > 0
        failed = await check_failed_entries(answer, body, images, dst, state)
        assert len(failed) <= 1, failed
        complete = await complete_at(dst, "app")
        mark = dst.mark()
        status, answer = await asyncio.to_thread(server.call, "POST", "/", body)
        assert (status, answer) == (200, {"ok": True}), answer
    assert not uploaded_since(dst, mark) & complete, "a complete blob was uploaded again"
    await assert_target_sound(dst, "app", tags=10)


async def test_serve_posts_while_the_source_storms_name_each_failed_entry(
    registry_factory: Any, tmp_path: Path, servers: list[Server]
) -> None:
    """`serve`'s POST while the source is overloaded: storms of 500, 502, 503 or 429
    (`Retry-After: 1`), each 1 s of refusing every request, starting at 1/10 of requests
    with 2 s of calm after each. The answer is `{"ok":true}` or names each failed entry;
    the job's stored entries say the same; what is tagged is whole; once the storms stop
    the same POST answers `{"ok":true}`."""
    src: LocalRegistry = registry_factory("src")
    dst: LocalRegistry = registry_factory("dst")
    images = corpus()
    await seed(src, "app", images)
    state = f"sqlite:///{tmp_path}/serve.state.db"
    server = await asyncio.to_thread(Server, tmp_path, state)
    servers.append(server)
    counts: Counter[str] = Counter()
    storms = http_faults(
        seed=1, rate=0.3, retry_after="1", storm_seconds=1.0, calm_seconds=1.0, counts=counts
    )
    storming = True

    async def gated(front: Front, request: web.Request, body: bytes) -> web.Response | None:
        return await storms(front, request, body) if storming else None

    async with Front(src, gated).running() as front:
        body = mirrors_body(front.host, dst.host, images)
        status, answer = await asyncio.to_thread(server.call, "POST", "/", body)
        assert status == 200, answer
        assert sum(counts.values()) > 0
        failed = await check_failed_entries(answer, body, images, dst, state)
        storming = False
        status, answer = await asyncio.to_thread(server.call, "POST", "/", body)
        assert (status, answer) == (200, {"ok": True}), answer
    print(f"\nserve, source storms: {dict(counts)}; failed entries: {sorted(failed)}")
    await assert_target_sound(dst, "app", tags=10)
    assert "Traceback" not in server.text()
