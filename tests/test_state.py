"""Tests of the state database: schema and migrations, runs, tasks, synced, jobs, URLs.

Each test uses a real SQLite file under tmp_path; retention too (old runs and jobs go, each
mirror's last and last successful run stay; the clock is injected). The backend-neutral
ones (those taking `url` or `db`) also run on PostgreSQL: a throwaway server (`LocalPostgres`: initdb into a
temp dir, on 127.0.0.1) started once per session, the first time a test needs it, and
stopped at the end; its `public` schema is dropped before each test. Set
OCIMIRROR_TEST_POSTGRES_URL to use an existing database instead, one the tests may wipe.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from ocimirror.errors import ConfigError
from ocimirror.settings.config import Config
from ocimirror.state.connection import (
    HEAD_REVISION,
    StateError,
    alembic_config,
    default_url,
    head_revision,
    normalise_url,
)
from ocimirror.state.db import StateDB, TaskRecord
from ocimirror.state.jobs import JobInfo
from ocimirror.state.retention import prune
from ocimirror.state.schema import metadata, runs, task_results, utc_now
from ocimirror.testkit.postgres import LocalPostgres

PG_URL = os.environ.get("OCIMIRROR_TEST_POSTGRES_URL")
TABLES = {"alembic_version", "runs", "task_results", "synced", "jobs"}
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def sqlite_url(path: Path) -> str:
    """Return the URL of a SQLite file, in the plain (sync) spelling a config would use."""
    return f"sqlite:///{path}"


def sqlite_tables(path: Path) -> set[str]:
    """Return the table names in a SQLite file, read with the sqlite3 module."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def task(
    dest_ref: str,
    status: str = "copied",
    *,
    digest: str = "sha256:aaa",
    mirror: str = "m",
    reason: str = "new",
    at: datetime | None = None,
    **kw: Any,
) -> TaskRecord:
    """Return a TaskRecord with the boring fields filled in."""
    ok = status in ("copied", "unchanged")
    return TaskRecord(
        mirror=mirror,
        target="dst.example",
        source_ref=f"src.example/{dest_ref.split('/', 1)[-1]}",
        dest_ref=dest_ref,
        reason=reason,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        source_digest=digest if ok else None,
        target_digest=digest if ok else None,
        finished_at=at or datetime.now(UTC),
        **kw,
    )


async def _wipe_postgres(url: str) -> None:
    """Drop and recreate the public schema of the PostgreSQL test database."""
    engine = create_async_engine(normalise_url(url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Return the URL of a PostgreSQL database: OCIMIRROR_TEST_POSTGRES_URL, or a local one."""
    if PG_URL:
        yield PG_URL
        return
    with LocalPostgres() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty state database: a SQLite file, or a wiped PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state.db")
    pg_url: str = request.getfixturevalue("postgres_url")
    await _wipe_postgres(pg_url)
    return pg_url


@pytest.fixture
async def db(url: str) -> AsyncIterator[StateDB]:
    """Return an open StateDB on an empty database."""
    async with StateDB(url) as state:
        yield state


@pytest.fixture
def commits() -> list[int]:
    """Return a list that `count_commits` fills, one entry per COMMIT."""
    return []


def count_commits(db: StateDB, into: list[int]) -> None:
    """Append to `into` on every transaction committed through the engine of `db`."""
    event.listen(db.engine.sync_engine, "commit", lambda _conn: into.append(1))


# --------------------------------------------------------------------------- opening, schema


async def test_open_creates_the_file_its_directory_and_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    async with StateDB(sqlite_url(path)) as db:
        assert path.is_file()
        assert await db.schema_version() == head_revision()
    assert sqlite_tables(path) == TABLES


async def test_reopen_is_idempotent_and_keeps_the_data(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state.db")
    async with StateDB(url) as db:
        run = await db.start_run("m", "cli")
        await db.record_tasks(run, [task("dst.example/a:1")])
        await db.finish_run(run, "ok", copied=1, unchanged=0, failed=0, skipped=0, bytes=10)
        job = await db.create_job({"mirror": "m"})
    for _ in range(2):  # a restart, twice: no migration runs again, nothing is lost
        async with StateDB(url) as db:
            assert await db.schema_version() == head_revision()
            assert (await db.last_runs())["m"].id == run
            assert set(await db.synced("m")) == {"dst.example/a:1"}
            assert (await db.get_job(job)) is not None
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (HEAD_REVISION,)
        ]


async def test_open_close_open_on_the_same_object(tmp_path: Path) -> None:
    db = StateDB(sqlite_url(tmp_path / "state.db"))
    with pytest.raises(StateError, match="not open"):
        await db.last_runs()
    await db.open()
    await db.start_run("m", "cli")
    await db.close()
    with pytest.raises(StateError, match="not open"):
        await db.last_runs()
    await db.open()
    assert list(await db.last_runs()) == ["m"]
    await db.close()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state.db")
    async with StateDB(url, busy_timeout_ms=12_345) as db, db.engine.connect() as conn:
        assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
        assert await conn.scalar(text("PRAGMA busy_timeout")) == 12_345


async def test_foreign_keys_are_enforced(db: StateDB) -> None:
    with pytest.raises(IntegrityError):
        await db.record_tasks(9999, [task("dst.example/a:1")])
    assert await db.synced("m") == {}  # the whole batch rolled back


async def test_check_constraints_refuse_unknown_values(db: StateDB) -> None:
    run = await db.start_run("m", "cli")
    with pytest.raises(IntegrityError):
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE runs SET status = 'bogus' WHERE id = :id"), {"id": run})


# --------------------------------------------------------------------------- migrations


def test_the_revisions_form_one_line_to_the_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(script.walk_revisions())
    assert [r.revision for r in revisions] == ["0003", "0002", "0001"]
    assert [r.down_revision for r in revisions] == ["0002", "0001", None]
    assert head_revision() == "0003"
    assert head_revision() == HEAD_REVISION  # the constant that spares loading Alembic


def test_opening_an_up_to_date_database_does_not_load_alembic(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state.db")
    asyncio.run(StateDB(url).open())  # creates and migrates it
    script = (
        "import asyncio, sys\n"
        "from ocimirror.state.db import StateDB\n"
        "async def main():\n"
        f"    async with StateDB({url!r}) as db:\n"
        "        print(await db.schema_version())\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [HEAD_REVISION, "False"]


def _schema_diff(conn: Connection) -> list[Any]:
    """Return the differences between the migrated schema and `metadata`."""
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_the_migrations_build_exactly_the_tables_the_code_uses(db: StateDB) -> None:
    assert await db.schema_version() == HEAD_REVISION
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []


async def test_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    url = sqlite_url(path)
    async with StateDB(url):
        pass
    # The URL path of env.py (no connection given) runs its own engine: use a thread.
    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    assert sqlite_tables(path) == {"alembic_version"}
    async with StateDB(url) as db:
        assert await db.schema_version() == HEAD_REVISION
    assert sqlite_tables(path) == TABLES


async def test_a_database_at_0001_gains_the_last_success_index_and_keeps_its_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    url = sqlite_url(path)
    async with StateDB(url) as db:
        run = await db.start_run("m", "cli")
        await db.finish_run(run, "ok", copied=0, unchanged=0, failed=0, skipped=0, bytes=0)
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0001")
    with sqlite3.connect(path) as conn:
        indexes = {r[1] for r in conn.execute("PRAGMA index_list('runs')")}
    assert "ix_runs_mirror_status_finished_at" not in indexes
    async with StateDB(url) as db:  # an ocimirror of before this revision wrote it
        assert await db.schema_version() == HEAD_REVISION
        assert set(await db.last_successes(["m"])) == {"m"}
    with sqlite3.connect(path) as conn:
        indexes = {r[1] for r in conn.execute("PRAGMA index_list('runs')")}
    assert "ix_runs_mirror_status_finished_at" in indexes


async def test_a_database_at_0002_gains_the_blob_counts_and_keeps_its_tasks(
    tmp_path: Path,
) -> None:
    """Revision 0003: task_results' blob counts; the rows written before read 0, new rows
    keep what they were given."""
    path = tmp_path / "state.db"
    url = sqlite_url(path)
    async with StateDB(url):
        pass
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0002")
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info('task_results')")}
        assert "blobs_copied" not in columns
        conn.execute(
            "INSERT INTO runs (mirror, trigger, status, started_at, copied, unchanged, failed,"
            " skipped, bytes) VALUES ('m', 'cli', 'running', '2026-12-01 00:00:00', 0, 0, 0,"
            " 0, 0)"
        )
        conn.execute(
            "INSERT INTO task_results (run_id, mirror, target, source_ref, dest_ref, reason,"
            " status, bytes, seconds, immutable, finished_at) VALUES (1, 'm', 'dst.example',"
            " 'src.example/a:1', 'dst.example/a:1', 'new', 'failed', 0, 0, 0,"
            " '2026-12-01 00:00:00')"
        )
    async with StateDB(url) as db:
        assert await db.schema_version() == HEAD_REVISION
        await db.record_tasks(1, [task("dst.example/a:2", blobs_copied=2, blobs_mounted=1)])
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT dest_ref, blobs_copied, blobs_mounted, blobs_skipped FROM task_results"
            " ORDER BY id"
        ).fetchall()
    assert rows == [("dst.example/a:1", 0, 0, 0), ("dst.example/a:2", 2, 1, 0)]


async def test_an_unknown_newer_revision_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with StateDB(sqlite_url(path)):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StateError, match="'9999'"):
        await StateDB(sqlite_url(path)).open()


# --------------------------------------------------------------------------- runs


async def test_run_lifecycle_last_runs_and_last_success(db: StateDB) -> None:
    assert await db.last_runs() == {}
    assert await db.last_success("a") is None

    r1 = await db.start_run("a", "schedule", started_at=T0)
    info = (await db.last_runs())["a"]
    assert (info.id, info.status, info.trigger, info.started_at) == (r1, "running", "schedule", T0)
    assert info.finished_at is None
    assert await db.last_success("a") is None  # running is not a success

    await db.finish_run(
        r1,
        "ok",
        copied=3,
        unchanged=4,
        failed=0,
        skipped=1,
        bytes=1234,
        finished_at=T0 + timedelta(minutes=1),
    )
    r2 = await db.start_run("a", "manual", started_at=T0 + timedelta(hours=1))
    await db.finish_run(
        r2,
        "partial",
        copied=1,
        unchanged=5,
        failed=2,
        skipped=0,
        bytes=99,
        error="2 images failed",
        finished_at=T0 + timedelta(hours=1, minutes=1),
    )
    r3 = await db.start_run("b", "api")

    last = await db.last_runs()
    assert set(last) == {"a", "b"}
    a = last["a"]
    assert (a.id, a.status, a.trigger, a.error) == (r2, "partial", "manual", "2 images failed")
    assert (a.copied, a.unchanged, a.failed, a.skipped, a.bytes) == (1, 5, 2, 0, 99)
    assert a.finished_at == T0 + timedelta(hours=1, minutes=1)
    assert (last["b"].id, last["b"].status) == (r3, "running")

    assert await db.last_success("a") == T0 + timedelta(minutes=1)  # partial does not count
    assert await db.last_success("b") is None

    history = await db.runs("a")
    assert [r.id for r in history] == [r2, r1]
    assert history[1].bytes == 1234
    assert [r.id for r in await db.runs("a", limit=1)] == [r2]

    # Every mirror at once, in one query each (the dashboard's and the mirrors API's).
    assert await db.last_successes() == {"a": T0 + timedelta(minutes=1)}
    recent = await db.recent_runs()
    assert {m: [r.id for r in rs] for m, rs in recent.items()} == {"a": [r2, r1], "b": [r3]}
    assert recent["a"][1].bytes == 1234
    limited = await db.recent_runs(limit=1)
    assert {m: [r.id for r in rs] for m, rs in limited.items()} == {"a": [r2], "b": [r3]}

    # The same for named mirrors only (the configured ones): an index lookup per mirror.
    assert await db.last_runs(["a", "b", "c"]) == last
    assert await db.last_runs(["b"]) == {"b": last["b"]}
    assert await db.last_runs([]) == {}
    assert await db.last_successes(["a", "b", "c"]) == {"a": T0 + timedelta(minutes=1)}
    # One statement for both (GET /api/v1/mirrors), the same answers; a shape reused.
    both = await db.last_runs_and_successes(["a", "b", "c"])
    assert both == (last, {"a": T0 + timedelta(minutes=1)})
    assert await db.last_runs_and_successes(["b"]) == ({"b": last["b"]}, {})
    assert await db.last_runs_and_successes(["a"]) == (
        {"a": last["a"]},
        {"a": T0 + timedelta(minutes=1)},
    )
    assert await db.last_runs_and_successes([]) == ({}, {})
    assert await db.recent_runs(mirrors=["a", "b", "c"]) == recent
    named = await db.recent_runs(limit=1, mirrors=["a"])
    assert {m: [r.id for r in rs] for m, rs in named.items()} == {"a": [r2]}


async def test_finish_run_refuses_unknown_runs_and_statuses(db: StateDB) -> None:
    with pytest.raises(LookupError):
        await db.finish_run(42, "ok", copied=0, unchanged=0, failed=0, skipped=0, bytes=0)
    run = await db.start_run("m", "cli")
    with pytest.raises(ValueError, match="running"):
        await db.finish_run(run, "running", copied=0, unchanged=0, failed=0, skipped=0, bytes=0)
    with pytest.raises(ValueError, match="status"):
        await db.finish_run(run, "great", copied=0, unchanged=0, failed=0, skipped=0, bytes=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trigger"):
        await db.start_run("m", "cron")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tasks and synced


async def test_record_tasks_bulk_500_in_one_commit(db: StateDB, commits: list[int]) -> None:
    run = await db.start_run("m", "schedule")
    records = [
        task(f"dst.example/app:{i}", "unchanged", digest=f"sha256:{i:064x}") for i in range(480)
    ]
    records += [task(f"dst.example/app:f{i}", "failed", error="boom") for i in range(15)]
    records += [task(f"dst.example/app:s{i}", "skipped", reason="immutable") for i in range(5)]
    assert len(records) == 500
    count_commits(db, commits)
    await db.record_tasks(run, records)
    assert len(commits) == 1

    done = await db.synced("m")
    assert len(done) == 480  # failed and skipped tasks leave `synced` alone
    assert done["dst.example/app:7"].target_digest == f"sha256:{7:064x}"
    async with db.engine.connect() as conn:
        counts = dict(
            (
                await conn.execute(
                    text(
                        "SELECT status, count(*) FROM task_results WHERE run_id = :r GROUP BY status"
                    ),
                    {"r": run},
                )
            ).all()
        )
        errors = await conn.scalar(text("SELECT count(*) FROM task_results WHERE error = 'boom'"))
    assert counts == {"unchanged": 480, "failed": 15, "skipped": 5}
    assert errors == 15


async def test_record_task_one_by_one(db: StateDB, commits: list[int]) -> None:
    run = await db.start_run("m", "cli")
    count_commits(db, commits)
    await db.record_task(run, task("dst.example/a:1", seconds=1.5, bytes=2048, immutable=True))
    await db.record_task(run, task("dst.example/a:2", "failed", error="401"))
    assert len(commits) == 2
    assert set(await db.synced("m")) == {"dst.example/a:1"}
    assert (await db.synced("m"))["dst.example/a:1"].immutable is True
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT bytes, seconds FROM task_results WHERE status = 'copied'")
            )
        ).one()
    assert tuple(row) == (2048, 1.5)
    await db.record_tasks(run, [])  # nothing to do, no transaction
    assert len(commits) == 2


async def test_synced_upsert_follows_a_moved_tag(db: StateDB) -> None:
    r1 = await db.start_run("m", "schedule")
    await db.record_task(r1, task("dst.example/a:latest", digest="sha256:old", at=T0))
    r2 = await db.start_run("m", "schedule")
    await db.record_task(
        r2,
        task("dst.example/a:latest", digest="sha256:new", reason="changed", at=T0 + timedelta(1)),
    )
    ref = (await db.synced("m"))["dst.example/a:latest"]
    assert (ref.source_digest, ref.target_digest) == ("sha256:new", "sha256:new")
    assert ref.source_ref == "src.example/a:latest"
    assert ref.synced_at == T0 + timedelta(1)
    assert ref.immutable is False

    # A failure afterwards keeps the last good state; so does an older result arriving late.
    await db.record_task(r2, task("dst.example/a:latest", "failed", at=T0 + timedelta(2)))
    await db.record_task(r1, task("dst.example/a:latest", digest="sha256:stale", at=T0))
    assert (await db.synced("m"))["dst.example/a:latest"].target_digest == "sha256:new"

    # The same reference twice in one batch: the later one wins.
    await db.record_tasks(
        r2,
        [
            task("dst.example/a:latest", digest="sha256:x", at=T0 + timedelta(3)),
            task("dst.example/a:latest", digest="sha256:y", at=T0 + timedelta(3)),
        ],
    )
    assert (await db.synced("m"))["dst.example/a:latest"].target_digest == "sha256:y"
    assert await db.synced("other") == {}


async def test_synced_is_per_mirror(db: StateDB) -> None:
    run = await db.start_run("one", "cli")
    await db.record_tasks(
        run,
        [
            task("dst.example/a:1", mirror="one", digest="sha256:1"),
            task("dst.example/a:1", mirror="two", digest="sha256:2"),
        ],
    )
    assert (await db.synced("one"))["dst.example/a:1"].target_digest == "sha256:1"
    assert (await db.synced("two"))["dst.example/a:1"].target_digest == "sha256:2"


def test_task_record_validation() -> None:
    with pytest.raises(ValueError, match="digest"):
        TaskRecord("m", "t", "s", "d", "new", "copied")
    with pytest.raises(ValueError, match="reason"):
        TaskRecord("m", "t", "s", "d", "because", "failed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        TaskRecord("m", "t", "s", "d", "new", "done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        TaskRecord("m", "t", "s", "d", "new", "failed", finished_at=datetime(2026, 1, 1))
    record = TaskRecord("m", "t", "s", "d", "new", "failed")
    assert record.finished_at.tzinfo is UTC


# --------------------------------------------------------------------------- interrupted work


async def test_interrupt_running_marks_runs_and_jobs(db: StateDB) -> None:
    done = await db.start_run("a", "schedule")
    await db.finish_run(done, "ok", copied=0, unchanged=1, failed=0, skipped=0, bytes=0)
    left1 = await db.start_run("a", "schedule")
    left2 = await db.start_run("b", "manual")
    queued = await db.create_job({"n": 1})
    running = await db.create_job({"n": 2})
    await db.update_job(running, state="running")
    finished = await db.create_job({"n": 3})
    await db.update_job(finished, state="done")

    assert await db.interrupt_running() == 4  # two runs; the queued and the running job
    last = await db.last_runs()
    for run, mirror in ((left1, "a"), (left2, "b")):
        info = last[mirror]
        assert (info.id, info.status) == (run, "interrupted")
        assert info.finished_at is not None
        assert info.error is not None
        assert "interrupted" in info.error
    assert (await db.runs("a"))[1].status == "ok"
    states = {j.id: j.state for j in await db.list_jobs()}
    assert states == {queued: "interrupted", running: "interrupted", finished: "done"}
    job = await db.get_job(running)
    assert job is not None
    assert job.finished_at is not None

    assert await db.interrupt_running() == 0


async def test_interrupt_runs_of_one_mirror_and_jobs_but_those_kept(db: StateDB) -> None:
    a = await db.start_run("a", "schedule")
    b = await db.start_run("b", "schedule")
    mine = await db.create_job({"n": 1})
    theirs = await db.create_job({"n": 2})
    await db.update_job(mine, state="running")
    await db.update_job(theirs, state="running")
    assert await db.interrupt_runs(mirror="a") == 1
    last = await db.last_runs()
    assert (last["a"].id, last["a"].status) == (a, "interrupted")
    assert (last["b"].id, last["b"].status) == (b, "running")
    assert await db.interrupt_jobs(keep=[mine]) == 1
    states = {j.id: j.state for j in await db.list_jobs()}
    assert states == {mine: "running", theirs: "interrupted"}


# --------------------------------------------------------------------------- jobs


async def test_jobs_crud(db: StateDB) -> None:
    assert await db.list_jobs() == []
    assert await db.get_job("no-such-job") is None
    request = {"mirror": "m", "tags": ["1", "2"], "dry_run": False}
    job_id = await db.create_job(request)
    assert len(job_id) == 36

    job = await db.get_job(job_id)
    assert isinstance(job, JobInfo)
    assert (job.state, job.request, job.progress, job.result, job.error) == (
        "queued",
        request,
        None,
        None,
        None,
    )
    assert job.started_at is None
    assert job.finished_at is None

    await db.update_job(job_id, state="running", progress={"done": 1, "total": 2})
    job = await db.get_job(job_id)
    assert job is not None
    assert job.state == "running"
    assert job.progress == {"done": 1, "total": 2}
    assert job.started_at is not None
    started = job.started_at

    await db.update_job(job_id, state="running", progress={"done": 2, "total": 2})
    await db.update_job(job_id, state="failed", result={"copied": 1}, error="one failed")
    job = await db.get_job(job_id)
    assert job is not None
    assert (job.state, job.result, job.error) == ("failed", {"copied": 1}, "one failed")
    assert job.progress == {"done": 2, "total": 2}
    assert job.started_at == started  # not reset by a second 'running'
    assert job.finished_at is not None
    assert job.finished_at >= started

    cancelled = await db.create_job({"mirror": "n"})
    await db.update_job(cancelled, state="cancelled")
    job = await db.get_job(cancelled)
    assert job is not None
    assert job.started_at is None  # it never ran
    assert job.finished_at is not None

    jobs = await db.list_jobs()
    assert [j.id for j in jobs] == [cancelled, job_id]
    assert [j.id for j in await db.list_jobs(limit=1)] == [cancelled]

    await db.update_job(job_id)  # nothing to change
    with pytest.raises(LookupError):
        await db.update_job("no-such-job", state="done")
    with pytest.raises(ValueError, match="state"):
        await db.update_job(job_id, state="paused")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- time zones


async def test_times_are_utc_aware_in_and_out(db: StateDB) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 14, 0, tzinfo=plus2)
    run = await db.start_run("m", "cli", started_at=local)
    await db.finish_run(
        run,
        "ok",
        copied=0,
        unchanged=0,
        failed=0,
        skipped=0,
        bytes=0,
        finished_at=local + timedelta(seconds=30),
    )
    await db.record_task(run, task("dst.example/a:1", at=local))
    info = (await db.runs("m"))[0]
    assert info.started_at == local
    assert info.started_at.utcoffset() == timedelta(0)
    assert info.started_at.hour == 12
    assert info.finished_at is not None
    assert info.finished_at.tzinfo is not None
    last_success = await db.last_success("m")
    assert last_success is not None
    assert last_success == local + timedelta(seconds=30)
    assert last_success.utcoffset() == timedelta(0)
    synced_at = (await db.synced("m"))["dst.example/a:1"].synced_at
    assert synced_at == local
    assert synced_at.utcoffset() == timedelta(0)

    job = await db.get_job(await db.create_job({}))
    assert job is not None
    assert job.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - job.created_at) < timedelta(minutes=1)

    with pytest.raises(ValueError, match="timezone-aware"):
        await db.start_run("m", "cli", started_at=datetime(2026, 6, 1, 12))


async def test_sqlite_stores_utc_text(tmp_path: Path) -> None:
    async with StateDB(sqlite_url(tmp_path / "state.db")) as db:
        await db.start_run(
            "m", "cli", started_at=datetime(2026, 6, 1, 14, tzinfo=timezone(timedelta(hours=2)))
        )
    with sqlite3.connect(tmp_path / "state.db") as conn:
        (stored,) = conn.execute("SELECT started_at FROM runs").fetchone()
    assert stored.startswith("2026-06-01 12:00:00")


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///state.db", "sqlite+aiosqlite:///state.db"),
        (
            "sqlite:////var/lib/ocimirror/state.db",
            "sqlite+aiosqlite:////var/lib/ocimirror/state.db",
        ),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        (
            "postgresql://u:p@db.example:5433/mirror",
            "postgresql+asyncpg://u:p@db.example:5433/mirror",
        ),
        ("postgres://u@db.example/mirror", "postgresql+asyncpg://u@db.example/mirror"),
        ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d?ssl=require", "postgresql+asyncpg://u@h/d?ssl=require"),
    ],
)
def test_url_normalisation(given: str, expected: str) -> None:
    assert normalise_url(given).render_as_string(hide_password=False) == expected
    assert StateDB(given).url.drivername == expected.split(":", 1)[0]


@pytest.mark.parametrize("bad", ["mysql://u@h/d", "not a url", "oracle+cx_oracle://h/d"])
def test_unsupported_urls_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        StateDB(bad)


def test_repr_hides_the_password() -> None:
    assert "secret" not in repr(StateDB("postgresql://u:secret@h/d"))


def test_default_url(tmp_path: Path) -> None:
    url = default_url(tmp_path / "conf" / "mirrors.yaml")
    assert url == f"sqlite+aiosqlite:///{tmp_path}/conf/mirrors.state.db"
    assert normalise_url(url).database == str(tmp_path / "conf" / "mirrors.state.db")


async def test_default_url_with_awkward_characters(tmp_path: Path) -> None:
    config = tmp_path / "my configs%20#1" / "mirrors.yaml"
    async with StateDB(default_url(config)) as db:
        await db.start_run("m", "cli")
    assert (tmp_path / "my configs%20#1" / "mirrors.state.db").is_file()


# --------------------------------------------------------------------------- concurrency


async def test_two_instances_share_one_file(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state.db")
    async with StateDB(url) as a, StateDB(url) as b:
        ra = await a.start_run("a", "schedule")
        rb = await b.start_run("b", "schedule")
        await a.record_tasks(ra, [task(f"dst.example/a:{i}", mirror="a") for i in range(50)])
        await b.record_tasks(rb, [task(f"dst.example/b:{i}", mirror="b") for i in range(50)])
        job = await b.create_job({"x": 1})
        await a.update_job(job, state="running")
        await a.finish_run(ra, "ok", copied=50, unchanged=0, failed=0, skipped=0, bytes=0)
        await b.finish_run(rb, "ok", copied=50, unchanged=0, failed=0, skipped=0, bytes=0)
        assert set(await a.last_runs()) == {"a", "b"}
        assert len(await a.synced("b")) == 50
        b_job = await b.get_job(job)
        assert b_job is not None
        assert b_job.state == "running"

        # Now at the same time: writers on both, readers in between, all waiting their turn.
        async def writer(db: StateDB, mirror: str, n: int) -> None:
            run = await db.start_run(mirror, "manual")
            await db.record_tasks(run, [task(f"dst.example/{mirror}:late{n}", mirror=mirror)])
            await db.update_job(job, progress={mirror: n})
            await db.finish_run(run, "ok", copied=1, unchanged=0, failed=0, skipped=0, bytes=0)
            await db.last_runs()

        await asyncio.gather(
            *(writer(db, name, n) for n in range(20) for db, name in ((a, "a"), (b, "b")))
        )
        assert len(await b.runs("a", limit=100)) == 21
        assert len(await a.runs("b", limit=100)) == 21
        assert len(await a.synced("a")) == 50 + 20


async def test_instances_create_the_schema_at_once(url: str) -> None:
    # One migration at a time, each in one transaction: the later ones wait, then find the
    # schema at head, instead of creating the tables again.
    dbs = [StateDB(url) for _ in range(4)]
    try:
        await asyncio.gather(*(db.open() for db in dbs))
        assert {await db.schema_version() for db in dbs} == {HEAD_REVISION}
        await dbs[1].start_run("m", "cli")
        assert list(await dbs[2].last_runs()) == ["m"]
    finally:
        for db in dbs:
            await db.close()


OPENER = """
import asyncio, sys
from ocimirror.state.db import StateDB

async def main(url: str) -> None:
    async with StateDB(url) as db:
        run = await db.start_run("p", "cli")
        await db.finish_run(run, "ok", copied=0, unchanged=0, failed=0, skipped=0, bytes=0)

print("ready", flush=True)
sys.stdin.readline()
asyncio.run(main(sys.argv[1]))
"""


async def test_processes_create_the_schema_at_once(tmp_path: Path) -> None:
    # Deferred transactions would fail here: a process that read the empty schema and then
    # wants to write finds its snapshot stale ("database is locked", or "table exists").
    url = sqlite_url(tmp_path / "state.db")
    pipe = asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPENER, url, stdin=pipe, stdout=pipe, stderr=pipe
        )
        for _ in range(4)
    ]
    for proc in procs:  # every interpreter has imported SQLAlchemy and Alembic: go
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
    results = [await proc.communicate(b"go\n") for proc in procs]
    errors = [
        err.decode() for proc, (_, err) in zip(procs, results, strict=True) if proc.returncode
    ]
    assert errors == []
    async with StateDB(url) as db:
        assert len(await db.runs("p")) == 4


# --------------------------------------------------------------------------- retention

KEEP = timedelta(days=30)


async def _run(db: StateDB, mirror: str, status: str, at: timedelta, now: object) -> int:
    start = now + at  # type: ignore[operator]
    run = await db.start_run(mirror, "schedule", started_at=start)
    await db.record_tasks(
        run, [task(f"dst.example/{mirror}:{run}-{i}", mirror=mirror) for i in (1, 2)]
    )
    if status != "running":
        await db.finish_run(
            run,
            status,  # type: ignore[arg-type]
            copied=2,
            unchanged=0,
            failed=0,
            skipped=0,
            bytes=0,
            finished_at=start + timedelta(minutes=1),
        )
    return run


async def _count(db: StateDB, table: object, *where: object) -> int:
    async with db.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)  # type: ignore[arg-type]


async def test_old_runs_and_jobs_go_but_each_mirrors_last_and_last_ok_run_stay(
    db: StateDB,
) -> None:
    now = utc_now() + timedelta(days=31)  # the jobs below finish "now": 31 days ago then
    old = timedelta(days=-90)
    r1 = await _run(db, "a", "ok", old, now)
    r2 = await _run(db, "a", "failed", old + timedelta(days=1), now)
    r3 = await _run(db, "a", "partial", old + timedelta(days=2), now)
    r7 = await _run(db, "a", "failed", timedelta(days=-1), now)  # recent: stays
    r4 = await _run(db, "b", "ok", old, now)  # its only run, however old
    r6 = await _run(db, "c", "failed", old, now)
    r5 = await _run(db, "c", "running", old, now)  # still running: never touched
    finished = await db.create_job({"mirrors": []})
    await db.update_job(finished, state="done")
    running = await db.create_job({"mirrors": []})
    await db.update_job(running, state="running")

    # 62 days earlier, nothing was older than 30 days yet.
    early = await prune(db, KEEP, now=now - timedelta(days=62))
    assert (early.runs, early.tasks, early.jobs) == (0, 0, 0)
    assert await _count(db, runs) == 7

    pruned = await prune(db, KEEP, now=now, batch=1, rows=1)  # the smallest batches loop
    assert (pruned.runs, pruned.tasks, pruned.jobs) == (3, 6, 1)
    async with db.engine.connect() as conn:
        left = set((await conn.execute(select(runs.c.id))).scalars())
    assert left == {r1, r4, r5, r7}, (r1, r2, r3, r4, r5, r6, r7)
    assert await _count(db, task_results) == 8  # two per run left
    assert await _count(db, task_results, task_results.c.run_id.in_([r2, r3, r6])) == 0
    assert await db.get_job(finished) is None
    assert (await db.get_job(running)) is not None
    # status reads the same: the last run, the last success
    last = await db.last_runs()
    assert {m: r.id for m, r in last.items()} == {"a": r7, "b": r4, "c": r5}
    assert await db.last_success("a") is not None

    again = await prune(db, KEEP, now=now)
    assert (again.runs, again.tasks, again.jobs) == (0, 0, 0)


def test_keep_history_reads_as_a_duration_and_zero_keeps_everything() -> None:
    assert Config().history_limit == timedelta(days=30)
    assert Config(keep_history="90d").history_limit == timedelta(days=90)
    assert Config(keep_history=0).history_limit is None
    with pytest.raises((ConfigError, ValueError), match="invalid interval 'a month'"):
        Config(keep_history="a month")
