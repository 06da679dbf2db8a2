"""The state database of sync passes and the jobs API: runs, image results, synced, jobs.

SQLAlchemy Core on an async engine: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) by
URL. `StateDB.open()` migrates the schema to the newest Alembic revision, so a database
written by an older ocimirror is upgraded in place and a fresh one is created.

    runs          one row per sync of a mirror: trigger, status, times and counts
    task_results  one row per image a run looked at, with why and what happened
    synced        the last successful state of each destination reference, upserted;
                  `synced_at` is the last time the target was copied or HEADed (a pass
                  trusting the state records nothing, so `verify_every` counts from it)
    jobs          work asked of the HTTP service: request, progress and result as JSON

Every datetime is timezone-aware UTC going in and coming out; SQLite keeps them as naive
UTC text, and they are made aware again when read.

On SQLite the engine runs in WAL mode with a busy timeout and foreign keys on, and
ocimirror emits BEGIN itself: `BEGIN IMMEDIATE` for writes, so two processes (or two
`StateDB`s) writing the same file wait for each other instead of failing with
"database is locked" when a deferred transaction tries to upgrade its lock.

Why it is long: it is one class, `StateDB`, over four tables that share one engine, one
transaction discipline (`BEGIN IMMEDIATE` on SQLite) and one datetime convention; each
method is a single query. The jobs table's methods could move to a module of their own.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    event,
    false,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Row, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert

from ..errors import ConfigError, OcimirrorError
from ..extras import require

if TYPE_CHECKING:
    from alembic.config import Config

RunStatus = Literal["running", "ok", "partial", "failed", "interrupted"]
Trigger = Literal["schedule", "manual", "api", "cli"]
TaskReason = Literal["new", "changed", "missing-at-target", "unchanged", "immutable"]
TaskStatus = Literal["copied", "unchanged", "failed", "skipped"]
JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]

RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
TRIGGERS: tuple[str, ...] = get_args(Trigger)
TASK_REASONS: tuple[str, ...] = get_args(TaskReason)
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
JOB_STATES: tuple[str, ...] = get_args(JobState)
#: Job states after which a job never changes again (they set `finished_at`).
JOB_FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled", "interrupted"})
#: Task statuses that leave the destination reference in sync (they upsert `synced`).
SYNCED_STATUSES: frozenset[str] = frozenset({"copied", "unchanged"})

#: Where Alembic finds `env.py` and `versions/`: a package resource, so no alembic.ini.
SCRIPT_LOCATION = "ocimirror.state:migrations"
#: The newest revision in `migrations/versions` (a test checks it against Alembic's head).
HEAD_REVISION = "0002"
#: Milliseconds a SQLite connection waits for another writer before giving up.
DEFAULT_BUSY_TIMEOUT_MS = 30_000
INTERRUPTED_ERROR = "interrupted: the process running it stopped before it finished"

# The pg_advisory_xact_lock key held while migrating ("ocimirro" in ASCII; any constant).
_PG_MIGRATION_LOCK = 0x6F63696D6972726F
# Alembic keeps its running migration in a module global (`alembic.context`), so two
# migrations interleaving on one event loop would trip over each other: one at a time.
_MIGRATION_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)

# Execution option marking a connection whose transaction will write (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "ocimirror_write"


class StateError(OcimirrorError):
    """Raised when the state database cannot be opened or used as asked."""


def _now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _aware(value: datetime, what: str) -> datetime:
    """Return `value` in UTC, refusing a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, not naive: {value!r}")
    return value.astimezone(UTC)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    """Refuse a value outside its Literal type."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored as UTC; naive values read back are taken as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC for SQLite, which drops the zone)."""
        if value is None:
            return None
        utc = _aware(value, "a state database time")
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime whatever the backend gave back."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    """Return the SQL text of a CHECK that `column` is one of `values`."""
    return f'"{column}" IN ({", ".join(repr(v) for v in values)})'


# An autoincrementing 64-bit key: BIGSERIAL on PostgreSQL, the rowid alias on SQLite (where
# only "INTEGER PRIMARY KEY" autoincrements; SQLite integers are 64-bit anyway).
_BigId = BigInteger().with_variant(Integer(), "sqlite")

#: Keep in step with the migrations: `tests/test_state.py` compares the two.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = Table(
    "runs",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("mirror", String(255), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("copied", Integer, nullable=False, server_default=text("0")),
    Column("unchanged", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    Column("skipped", Integer, nullable=False, server_default=text("0")),
    Column("bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("error", Text, nullable=True),
    CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    CheckConstraint(_in("trigger", TRIGGERS), name="trigger"),
    Index(None, "mirror", "id"),
    Index(None, "status"),
    Index(None, "mirror", "status", "finished_at"),
)

task_results = Table(
    "task_results",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("run_id", _BigId, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("mirror", String(255), nullable=False),
    Column("target", Text, nullable=False),
    Column("source_ref", Text, nullable=False),
    Column("dest_ref", Text, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("source_digest", Text, nullable=True),
    Column("target_digest", Text, nullable=True),
    Column("bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("seconds", Float, nullable=False, server_default=text("0")),
    Column("immutable", Boolean, nullable=False, server_default=false()),
    Column("error", Text, nullable=True),
    Column("finished_at", UTCDateTime(), nullable=False),
    CheckConstraint(_in("reason", TASK_REASONS), name="reason"),
    CheckConstraint(_in("status", TASK_STATUSES), name="status"),
    Index(None, "run_id"),
    Index(None, "mirror", "dest_ref"),
)

synced = Table(
    "synced",
    metadata,
    Column("mirror", String(255), primary_key=True),
    Column("dest_ref", Text, primary_key=True),
    Column("source_ref", Text, nullable=False),
    Column("source_digest", Text, nullable=False),
    Column("target_digest", Text, nullable=False),
    Column("synced_at", UTCDateTime(), nullable=False),
    Column("immutable", Boolean, nullable=False, server_default=false()),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("request", JSON, nullable=False),
    Column("progress", JSON(none_as_null=True), nullable=True),
    Column("result", JSON(none_as_null=True), nullable=True),
    Column("error", Text, nullable=True),
    CheckConstraint(_in("state", JOB_STATES), name="state"),
    Index(None, "created_at"),
    Index(None, "state"),
)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What happened to one image in a run: one row of `task_results`."""

    mirror: str
    target: str
    source_ref: str
    dest_ref: str
    reason: TaskReason
    status: TaskStatus
    source_digest: str | None = None
    target_digest: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    immutable: bool = False
    finished_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        """Refuse unknown reasons and statuses, naive times, and a success without digests."""
        _check(self.reason, TASK_REASONS, "reason")
        _check(self.status, TASK_STATUSES, "status")
        _aware(self.finished_at, "finished_at")
        if self.status in SYNCED_STATUSES and not (self.source_digest and self.target_digest):
            raise ValueError(
                f"a {self.status} task needs source_digest and target_digest ({self.dest_ref})"
            )


@dataclass(frozen=True, slots=True)
class SyncedRef:
    """The last successful state of one destination reference."""

    source_ref: str
    source_digest: str
    target_digest: str
    synced_at: datetime
    immutable: bool


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run of a mirror: trigger, status, times and counts."""

    id: int
    mirror: str
    trigger: Trigger
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    copied: int
    unchanged: int
    failed: int
    skipped: int
    bytes: int
    error: str | None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job of the HTTP service: its request, state, progress and result."""

    id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    request: dict[str, Any]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None


def _run_info(row: Row[Any]) -> RunInfo:
    """Build a RunInfo from a `runs` row."""
    m = row._mapping
    return RunInfo(
        id=int(m["id"]),
        mirror=m["mirror"],
        trigger=m["trigger"],
        status=m["status"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        copied=m["copied"],
        unchanged=m["unchanged"],
        failed=m["failed"],
        skipped=m["skipped"],
        bytes=m["bytes"],
        error=m["error"],
    )


def _job_info(row: Row[Any]) -> JobInfo:
    """Build a JobInfo from a `jobs` row."""
    m = row._mapping
    return JobInfo(
        id=m["id"],
        state=m["state"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        request=m["request"],
        progress=m["progress"],
        result=m["result"],
        error=m["error"],
    )


_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL and switch it to the async driver (aiosqlite or asyncpg)."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"not a database URL: {url!r}") from e
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"unsupported state database {parsed.drivername!r}: "
            "use sqlite:///path or postgresql://user@host/db"
        )
    if driver == "postgresql+asyncpg":
        require("asyncpg", "postgres", "a PostgreSQL state database")
    return parsed.set(drivername=driver)


def default_url(config_path: Path) -> str:
    """Return the default state database beside a config file: `<dir>/<stem>.state.db`."""
    path = config_path.expanduser().absolute()
    db = path.with_name(f"{path.stem}.state.db")
    return URL.create("sqlite+aiosqlite", database=str(db)).render_as_string()


def alembic_config(url: str | URL | None = None) -> Config:
    """Return an Alembic Config for the state migrations, with no alembic.ini needed."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if url is not None:
        rendered = normalise_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """Return the newest schema revision this ocimirror knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the state migrations have no head revision"
    return head


def _upgrade(conn: Connection) -> None:
    """Migrate the schema to head on a sync connection, inside the caller's transaction.

    A database already at HEAD_REVISION is recognised with one query, without loading
    Alembic (a third of a second at every start of `ocimirror sync`).
    """
    if _recorded_revision(conn) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    if conn.dialect.name == "postgresql":
        # Processes opening the database at once migrate one after the other (SQLite gets
        # the same from BEGIN IMMEDIATE); the lock goes with the transaction.
        conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    current = MigrationContext.configure(conn).get_current_revision()
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise StateError(
            f"the state database is at schema revision {current!r}, which this ocimirror "
            "does not know (written by a newer version?)"
        )
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _migration_lock() -> asyncio.Lock:
    """Return the lock that runs one migration at a time on the running event loop."""
    loop = asyncio.get_running_loop()
    lock = _MIGRATION_LOCKS.get(loop)
    if lock is None:
        lock = _MIGRATION_LOCKS[loop] = asyncio.Lock()
    return lock


def _recorded_revision(conn: Connection) -> str | None:
    """The revision in `alembic_version`, or None when there is no such table or row."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return str(rows[0]) if len(rows) == 1 else None


def _make_parent_dir(database: str) -> None:
    """Create the directory a SQLite database file goes in."""
    Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_on_connect(busy_timeout_ms: int) -> Any:
    """Return a pool `connect` hook: pragmas, and BEGIN left to `_sqlite_on_begin`."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the sqlite3 driver from emitting (deferred) BEGINs itself, and before DML only.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return on_connect


def _sqlite_on_begin(conn: Connection) -> None:
    """Begin a SQLite transaction: IMMEDIATE (take the write lock now) when it will write."""
    write = bool(conn.get_execution_options().get(_WRITE_OPTION, False))
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _synced_upsert(dialect_name: str) -> Insert:
    """Return the INSERT ... ON CONFLICT DO UPDATE of `synced` for this dialect."""
    stmt: sqlite.Insert | postgresql.Insert
    if dialect_name == "sqlite":
        stmt = sqlite.insert(synced)
    elif dialect_name == "postgresql":
        stmt = postgresql.insert(synced)
    else:  # normalise_url admits no other backend
        raise StateError(f"no upsert for database dialect {dialect_name!r}")
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[synced.c.mirror, synced.c.dest_ref],
        set_={c.name: excluded[c.name] for c in synced.c if not c.primary_key},
        # A slow, older run finishing late must not undo what a newer one recorded.
        where=synced.c.synced_at <= excluded.synced_at,
    )


async def write_tasks(conn: AsyncConnection, run_id: int, results: Sequence[TaskRecord]) -> None:
    """Write task results and their `synced` upserts in the caller's transaction."""
    if not results:
        return
    rows = [
        {
            "run_id": run_id,
            "mirror": r.mirror,
            "target": r.target,
            "source_ref": r.source_ref,
            "dest_ref": r.dest_ref,
            "reason": r.reason,
            "status": r.status,
            "source_digest": r.source_digest,
            "target_digest": r.target_digest,
            "bytes": r.bytes,
            "seconds": r.seconds,
            "immutable": r.immutable,
            "error": r.error,
            "finished_at": r.finished_at,
        }
        for r in results
    ]
    # One row per key: PostgreSQL refuses to upsert a row twice in one statement.
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r.status in SYNCED_STATUSES:
            latest[(r.mirror, r.dest_ref)] = {
                "mirror": r.mirror,
                "dest_ref": r.dest_ref,
                "source_ref": r.source_ref,
                "source_digest": r.source_digest,
                "target_digest": r.target_digest,
                "synced_at": r.finished_at,
                "immutable": r.immutable,
            }
    await conn.execute(insert(task_results), rows)
    if latest:
        await conn.execute(_synced_upsert(conn.dialect.name), list(latest.values()))


class StateDB:
    """The state database: `async with StateDB(url) as db: ...`."""

    def __init__(self, url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        """Remember the database URL (normalised to an async driver); `open()` connects."""
        self.url: URL = normalise_url(url)
        self.busy_timeout_ms = busy_timeout_ms
        self._engine: AsyncEngine | None = None

    def __repr__(self) -> str:
        """Show the URL without its password."""
        return f"StateDB({self.url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> AsyncEngine:
        """Return the open engine."""
        if self._engine is None:
            raise StateError("the state database is not open")
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        """Return True for a SQLite database."""
        return self.url.get_backend_name() == "sqlite"

    async def open(self) -> None:
        """Connect, creating the SQLite file and its directory if needed, and migrate to head."""
        if self._engine is not None:
            return
        if self.is_sqlite:
            database = self.url.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                await asyncio.to_thread(_make_parent_dir, database)
        engine = create_async_engine(self.url)
        if self.is_sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect(self.busy_timeout_ms))
            event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        self._engine = engine
        try:
            async with _migration_lock(), self._write() as conn:
                await conn.run_sync(_upgrade)
        except BaseException:
            self._engine = None
            await engine.dispose()
            raise

    async def close(self) -> None:
        """Close every connection; `open()` may be called again."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> Self:
        """Open the database."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the database."""
        await self.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """Yield a connection in a write transaction, committed when the block ends."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    async def schema_version(self) -> str:
        """Return the Alembic revision the database is at."""
        async with self.engine.connect() as conn:
            revision = await conn.run_sync(_recorded_revision)
        if revision is None:
            raise StateError("the state database has no schema revision")
        return revision

    # -- runs ------------------------------------------------------------------------------

    async def start_run(
        self, mirror: str, trigger: Trigger, *, started_at: datetime | None = None
    ) -> int:
        """Record a run of `mirror` as running and return its id."""
        _check(trigger, TRIGGERS, "trigger")
        started_at = _aware(started_at, "started_at") if started_at else _now()
        async with self._write() as conn:
            result = await conn.execute(
                insert(runs).values(
                    mirror=mirror,
                    trigger=trigger,
                    status="running",
                    started_at=started_at,
                )
            )
            key = result.inserted_primary_key
            if key is None:  # pragma: no cover - both backends return the new id
                raise StateError("the database did not return the new run's id")
            return int(key[0])

    async def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        copied: int,
        unchanged: int,
        failed: int,
        skipped: int,
        bytes: int,
        error: str | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        """Record the end of a run: its status, counts and error."""
        _check(status, RUN_STATUSES, "status")
        if status == "running":
            raise ValueError("a finished run cannot be 'running'")
        finished_at = _aware(finished_at, "finished_at") if finished_at else _now()
        async with self._write() as conn:
            result = await conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    status=status,
                    finished_at=finished_at,
                    copied=copied,
                    unchanged=unchanged,
                    failed=failed,
                    skipped=skipped,
                    bytes=bytes,
                    error=error,
                )
            )
            if result.rowcount == 0:
                raise LookupError(f"no run with id {run_id}")

    async def record_task(self, run_id: int, result: TaskRecord) -> None:
        """Record one task's result; a copied or unchanged one also updates `synced`."""
        await self.record_tasks(run_id, [result])

    async def record_tasks(self, run_id: int, results: Sequence[TaskRecord]) -> None:
        """Record many task results (and their `synced` upserts) in one transaction."""
        if not results:
            return
        async with self._write() as conn:
            await write_tasks(conn, run_id, results)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """Yield a connection in a write transaction (for writes spanning other tables)."""
        async with self._write() as conn:
            yield conn

    async def synced(self, mirror: str) -> dict[str, SyncedRef]:
        """Return the last successful state of each destination reference of `mirror`."""
        stmt = select(synced).where(synced.c.mirror == mirror)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {
            row.dest_ref: SyncedRef(
                source_ref=row.source_ref,
                source_digest=row.source_digest,
                target_digest=row.target_digest,
                synced_at=row.synced_at,
                immutable=bool(row.immutable),
            )
            for row in rows
        }

    async def synced_under(
        self, where: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, str | None]]:
        """Count, per (mirror, repository or prefix), the references `synced` holds under it
        (`REPO:tag`, `REPO@digest` or `REPO/...`), with the smallest target digest: one
        statement, the counting done by the database."""
        wanted = list(dict.fromkeys(where))
        if not wanted:
            return {}
        parts = []
        for i, (mirror, repo) in enumerate(wanted):
            head = func.substr(synced.c.dest_ref, 1, len(repo) + 1)
            parts.append(
                select(
                    literal(i).label("i"),
                    func.count().label("n"),
                    func.min(synced.c.target_digest).label("digest"),
                ).where(
                    synced.c.mirror == mirror,
                    head.in_([repo + ":", repo + "@", repo + "/"]),
                )
            )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(union_all(*parts))).all()
        return {wanted[int(i)]: (int(n), digest) for i, n, digest in rows}

    async def last_runs(self, mirrors: Sequence[str] | None = None) -> dict[str, RunInfo]:
        """Return the latest run of each mirror (of those named in `mirrors`, when given).

        Naming the mirrors bounds the work by their number, not by the runs recorded: one
        statement, an index lookup per mirror.
        """
        if mirrors is not None:
            rows = await self._per_mirror(
                mirrors, lambda m: select(runs).where(runs.c.mirror == m), limit=1
            )
            return {row.mirror: _run_info(row) for row in rows}
        latest = select(func.max(runs.c.id).label("id")).group_by(runs.c.mirror).subquery()
        stmt = select(runs).join(latest, runs.c.id == latest.c.id).order_by(runs.c.mirror)
        async with self.engine.connect() as conn:
            found = (await conn.execute(stmt)).all()
        return {row.mirror: _run_info(row) for row in found}

    async def _per_mirror(
        self, mirrors: Sequence[str], query: Callable[[str], Select[Any]], *, limit: int
    ) -> list[Row[Any]]:
        """Run `query(mirror)`, newest `limit` runs first, for each mirror in one statement."""
        names = list(dict.fromkeys(mirrors))
        if not names:
            return []
        parts = [select(query(m).order_by(runs.c.id.desc()).limit(limit).subquery()) for m in names]
        stmt = parts[0] if len(parts) == 1 else union_all(*parts)
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).all())

    async def last_success(self, mirror: str) -> datetime | None:
        """Return when the latest run of `mirror` with status ok finished, or None."""
        stmt = select(func.max(runs.c.finished_at)).where(
            runs.c.mirror == mirror, runs.c.status == "ok"
        )
        async with self.engine.connect() as conn:
            value: datetime | None = await conn.scalar(stmt)
        return value

    async def last_successes(self, mirrors: Sequence[str] | None = None) -> dict[str, datetime]:
        """Return, per mirror with one, when its latest run with status ok finished.

        With `mirrors`, only those, each an index lookup (mirror, status, finished_at).
        """
        if mirrors is not None:
            names = list(dict.fromkeys(mirrors))
            if not names:
                return {}
            parts = [
                select(literal(i).label("i"), func.max(runs.c.finished_at).label("at")).where(
                    runs.c.mirror == m, runs.c.status == "ok"
                )
                for i, m in enumerate(names)
            ]
            stmt = parts[0] if len(parts) == 1 else union_all(*parts)
            async with self.engine.connect() as conn:
                found = (await conn.execute(stmt)).all()
            return {names[int(i)]: at for i, at in found if at is not None}
        stmt = (
            select(runs.c.mirror, func.max(runs.c.finished_at))
            .where(runs.c.status == "ok")
            .group_by(runs.c.mirror)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {mirror: at for mirror, at in rows if at is not None}

    async def recent_runs(
        self, limit: int = 20, mirrors: Sequence[str] | None = None
    ) -> dict[str, list[RunInfo]]:
        """Return the latest `limit` runs of every mirror (or of `mirrors`), newest first, in
        one query; naming the mirrors reads only their `limit` newest runs each."""
        out: dict[str, list[RunInfo]] = {}
        if mirrors is not None:
            found = await self._per_mirror(
                mirrors, lambda m: select(runs).where(runs.c.mirror == m), limit=limit
            )
            for row in sorted(found, key=lambda r: (r.mirror, -r.id)):
                out.setdefault(row.mirror, []).append(_run_info(row))
            return out
        rank = (
            func.row_number()
            .over(partition_by=runs.c.mirror, order_by=runs.c.id.desc())
            .label("rank")
        )
        ranked = select(runs, rank).subquery()
        stmt = (
            select(ranked)
            .where(ranked.c.rank <= limit)
            .order_by(ranked.c.mirror, ranked.c.id.desc())
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        for row in rows:
            out.setdefault(row.mirror, []).append(_run_info(row))
        return out

    async def runs(self, mirror: str, limit: int = 20) -> list[RunInfo]:
        """Return the latest runs of `mirror`, newest first."""
        stmt = select(runs).where(runs.c.mirror == mirror).order_by(runs.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_run_info(row) for row in rows]

    async def interrupt_running(self) -> int:
        """Mark runs and jobs still running (their process died) as interrupted; count them."""
        return await self.interrupt_runs() + await self.interrupt_jobs()

    async def interrupt_runs(self, mirror: str | None = None, keep: Collection[int] = ()) -> int:
        """Mark runs still 'running' (of one mirror, or all) as interrupted, but those in
        `keep` (held by queue workers, not by a process); count them."""
        stmt = update(runs).where(runs.c.status == "running")
        if mirror is not None:
            stmt = stmt.where(runs.c.mirror == mirror)
        if keep:
            stmt = stmt.where(runs.c.id.not_in(list(keep)))
        stmt = stmt.values(
            status="interrupted",
            finished_at=_now(),
            error=func.coalesce(runs.c.error, INTERRUPTED_ERROR),
        )
        async with self._write() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount)

    async def interrupt_jobs(self, keep: Collection[str] = ()) -> int:
        """Mark jobs left 'queued' or 'running' as interrupted, but those in `keep`; count them."""
        stmt = update(jobs).where(jobs.c.state.in_(("queued", "running")))
        if keep:
            stmt = stmt.where(jobs.c.id.not_in(list(keep)))
        stmt = stmt.values(
            state="interrupted",
            finished_at=_now(),
            error=func.coalesce(jobs.c.error, INTERRUPTED_ERROR),
        )
        async with self._write() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount)

    # -- jobs ------------------------------------------------------------------------------

    async def create_job(self, request: dict[str, Any]) -> str:
        """Record a queued job for `request` and return its id (a UUID)."""
        job_id = str(uuid.uuid4())
        async with self._write() as conn:
            await conn.execute(
                insert(jobs).values(id=job_id, state="queued", created_at=_now(), request=request)
            )
        return job_id

    async def update_job(
        self,
        job_id: str,
        *,
        state: JobState | None = None,
        progress: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Change what is given of a job; running sets started_at, a final state finished_at."""
        values: dict[str, Any] = {}
        now = _now()
        if state is not None:
            _check(state, JOB_STATES, "state")
            values["state"] = state
            if state == "running":
                values["started_at"] = func.coalesce(jobs.c.started_at, literal(now, UTCDateTime()))
            elif state in JOB_FINAL_STATES:
                values["finished_at"] = now
        if progress is not None:
            values["progress"] = progress
        if result is not None:
            values["result"] = result
        if error is not None:
            values["error"] = error
        if not values:
            return
        async with self._write() as conn:
            updated = await conn.execute(update(jobs).where(jobs.c.id == job_id).values(values))
            if updated.rowcount == 0:
                raise LookupError(f"no job with id {job_id}")

    async def get_job(self, job_id: str) -> JobInfo | None:
        """Return a job, or None if there is none with that id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return None if row is None else _job_info(row)

    async def list_jobs(self, limit: int = 50) -> list[JobInfo]:
        """Return the latest jobs, newest first."""
        stmt = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_job_info(row) for row in rows]
