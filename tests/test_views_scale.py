"""The dashboard and `status` at scale: what they ask of the state database is bounded.

Issue 17 wants the dashboard and `status` fast with 10,000 tags and 1,000 recorded runs.
Time is measured in bench/scale.py; here, on SQLite and PostgreSQL, what could make them
slow: each view is rendered on a small database and again after many more runs and tags
are recorded, and the number of SQL statements it sends (counted with a SQLAlchemy
`before_cursor_execute` listener) must not change, nor the size of the page beyond what
its fixed limits allow.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, insert

from ocimirror.metrics import MirrorMetrics
from ocimirror.service.access import AccessPolicy
from ocimirror.service.app import Service, make_app
from ocimirror.service.dashboard import CHART_RUNS
from ocimirror.service.jobs import JobManager
from ocimirror.settings.config import Config
from ocimirror.state.db import StateDB
from ocimirror.state.schema import runs, synced
from ocimirror.sync.commands import status_rows
from test_state import _wipe_postgres, postgres_url, sqlite_url  # noqa: F401 (fixture)

MIRRORS = ("alpha", "beta", "gamma")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[StateDB]:
    """An open, empty state database on each backend."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "state.db")
    else:
        url = request.getfixturevalue("postgres_url")
        await _wipe_postgres(url)
    async with StateDB(url) as state:
        yield state


def config() -> Config:
    """Three on-demand mirrors, each from a list of sources to a prefix."""
    return Config.model_validate(
        {
            "mirrors": [
                {
                    "name": name,
                    "source": [f"src.example/{name}/a", f"src.example/{name}/b"],
                    "targets": [f"dst.example/{name}", f"backup.example/{name}"],
                    "schedule": 0,
                }
                for name in MIRRORS
            ]
        }
    )


async def add_history(db: StateDB, *, runs_each: int, tags_each: int, start: int) -> None:
    """Record `runs_each` finished runs and `tags_each` synced tags per mirror."""
    run_rows = [
        {
            "mirror": name,
            "trigger": "schedule",
            "status": "ok" if i % 4 else "partial",
            "started_at": T0 + timedelta(minutes=start + i),
            "finished_at": T0 + timedelta(minutes=start + i, seconds=20),
            "bytes": i,
            "error": None if i % 4 else "one failed",
        }
        for name in MIRRORS
        for i in range(runs_each)
    ]
    synced_rows = [
        {
            "mirror": name,
            "dest_ref": f"dst.example/{name}/a:t{start + i}",
            "source_ref": f"src.example/{name}/a:t{start + i}",
            "source_digest": "sha256:" + "1" * 64,
            "target_digest": "sha256:" + "2" * 64,
            "synced_at": T0,
        }
        for name in MIRRORS
        for i in range(tags_each)
    ]
    async with db.engine.begin() as conn:
        await conn.execute(insert(runs), run_rows)
        await conn.execute(insert(synced), synced_rows)


class CountStatements:
    """Count the statements `db` sends inside the `with` block."""

    def __init__(self, db: StateDB) -> None:
        self.engine = db.engine.sync_engine
        self.seen: list[str] = []
        #: Each statement with its parameters, for EXPLAIN.
        self.sent: list[tuple[str, Any]] = []

    def _on(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.seen.append(statement)
        self.sent.append((statement, parameters))

    def __enter__(self) -> CountStatements:
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)


@dataclass
class StubMirrors:
    """The configured mirrors as the service sees them (no daemon running)."""

    config: Config
    next_run: dict[str, datetime | None] = field(default_factory=dict)
    metrics: MirrorMetrics = field(default_factory=MirrorMetrics)

    def busy(self) -> set[str]:
        """Nothing runs."""
        return set()


@pytest.fixture
async def client(db: StateDB) -> AsyncIterator[TestClient[Any, Any]]:
    """The service's app on a loopback port, over the state database `db`."""
    cfg = config()
    jobs = JobManager(db, config=cfg)
    service = Service(
        state=db,
        jobs=jobs,
        metrics=MirrorMetrics(),
        daemon=StubMirrors(cfg),  # type: ignore[arg-type]
        policy=AccessPolicy.of(allowed_hosts=["*"]),
    )
    async with TestClient(TestServer(make_app(service))) as c:
        yield c
    await jobs.close()


def not_transaction(statements: list[str]) -> list[str]:
    """The statements but BEGIN, COMMIT and ROLLBACK (SQLite's BEGIN is ocimirror's own)."""
    return [s for s in statements if s.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK")]


def full_scans(db: StateDB, statement: str, parameters: Any) -> list[str]:
    """The tables SQLite's plan for `statement` reads whole, with sqlite3: a `SCAN`, unless
    it walks an index in order under a LIMIT (it stops after LIMIT rows)."""
    if statement.split()[0].upper() != "SELECT":
        return []
    with sqlite3.connect(str(db.url.database)) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
    scans = [
        row[-1] for row in plan if re.match(r"SCAN (runs|synced|task_results|jobs)\b", row[-1])
    ]
    bounded = "LIMIT" in statement.upper()
    return [scan for scan in scans if not (bounded and "USING INDEX" in scan)]


async def render(client: TestClient[Any, Any], path: str) -> str:
    """GET a page, which must answer 200."""
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def test_dashboard_statements_do_not_grow_with_runs_or_tags(
    db: StateDB, client: TestClient[Any, Any]
) -> None:
    await add_history(db, runs_each=3, tags_each=5, start=0)
    await render(client, "/")  # warm-up: a first connection may ask the server things
    with CountStatements(db) as few_page:
        small = await render(client, "/")
    with CountStatements(db) as few_poll:
        await render(client, "/api/v1/dashboard")

    await add_history(db, runs_each=400, tags_each=2000, start=100)
    with CountStatements(db) as many_page:
        big = await render(client, "/")
    with CountStatements(db) as many_poll:
        await render(client, "/api/v1/dashboard")

    assert not_transaction(many_page.seen) == not_transaction(few_page.seen)
    assert not_transaction(many_poll.seen) == not_transaction(few_poll.seen)
    assert len(not_transaction(many_page.seen)) <= 5
    if db.is_sqlite:  # and each reads runs through an index, never the whole table
        for statement, parameters in [*many_page.sent, *many_poll.sent]:
            assert not full_scans(db, statement, parameters), statement
    # The page draws at most CHART_RUNS runs per mirror, however many are recorded.
    bars = len(re.findall(r'<rect class="bar ', big))
    assert len(re.findall(r'<rect class="bar ', small)) == 3 * len(MIRRORS)
    assert bars <= CHART_RUNS * len(MIRRORS)
    assert bars > 3 * len(MIRRORS)


async def test_status_statements_do_not_grow_with_runs_or_tags(db: StateDB) -> None:
    cfg = config()
    now = T0 + timedelta(days=30)
    await add_history(db, runs_each=2, tags_each=1, start=0)
    await status_rows(cfg, db, now)
    with CountStatements(db) as few:
        small = await status_rows(cfg, db, now)
    await add_history(db, runs_each=300, tags_each=3000, start=100)
    with CountStatements(db) as many:
        big = await status_rows(cfg, db, now)

    assert not_transaction(many.seen) == not_transaction(few.seen)
    assert len(not_transaction(many.seen)) == 2
    # The tags under a target are counted by the database, not read one by one.
    (tags,) = [s for s in many.seen if "synced" in s]
    assert "count(" in tags.lower()
    if db.is_sqlite:
        for statement, parameters in many.sent:
            assert not full_scans(db, statement, parameters), statement
    # One row per (mirror, target), whatever the history; the database did the counting.
    assert len(big) == len(small) == 2 * len(MIRRORS)
    digests = {row[1]: row[4] for row in small}
    assert digests["dst.example/alpha"] == "sha256:222222222222"
    assert digests["backup.example/alpha"] == "-"
    counts = {row[1]: row[4] for row in big}
    assert counts["dst.example/alpha"] == "3001 tags"
    assert counts["backup.example/beta"] == "-"
