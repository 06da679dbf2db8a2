"""Opening the state database: its URL, its engine, its SQLite pragmas, its migration.

SQLAlchemy Core on an async engine: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) by
URL. `Database.open()` migrates the schema to the newest Alembic revision, so a database
written by an older ocimirror is upgraded in place and a fresh one is created.

On SQLite the engine runs in WAL mode with a busy timeout and foreign keys on, and
ocimirror emits BEGIN itself: `BEGIN IMMEDIATE` for writes, so two processes (or two
`StateDB`s) writing the same file wait for each other instead of failing with
"database is locked" when a deferred transaction tries to upgrade its lock.

`Database` holds the engine and the transaction discipline; the queries are its
subclasses' (`jobs.JobsDB`, `db.StateDB`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import ConfigError, OcimirrorError
from ..extras import require

if TYPE_CHECKING:
    from alembic.config import Config

#: Where Alembic finds `env.py` and `versions/`: a package resource, so no alembic.ini.
SCRIPT_LOCATION = "ocimirror.state:migrations"
#: The newest revision in `migrations/versions` (a test checks it against Alembic's head).
HEAD_REVISION = "0003"
#: Milliseconds a SQLite connection waits for another writer before giving up.
DEFAULT_BUSY_TIMEOUT_MS = 30_000

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


class Database:
    """An open state database: its engine and write transactions (`async with ...`)."""

    def __init__(self, url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        """Remember the database URL (normalised to an async driver); `open()` connects."""
        self.url: URL = normalise_url(url)
        self.busy_timeout_ms = busy_timeout_ms
        self._engine: AsyncEngine | None = None

    def __repr__(self) -> str:
        """Show the URL without its password."""
        return f"{type(self).__name__}({self.url.render_as_string(hide_password=True)!r})"

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

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """Yield a connection in a write transaction (for writes spanning other tables)."""
        async with self._write() as conn:
            yield conn

    async def schema_version(self) -> str:
        """Return the Alembic revision the database is at."""
        async with self.engine.connect() as conn:
            revision = await conn.run_sync(_recorded_revision)
        if revision is None:
            raise StateError("the state database has no schema revision")
        return revision
