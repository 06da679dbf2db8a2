"""The tables the queue needs beside the state database's own, made idempotently.

procrastinate's schema (its jobs, events, workers and locks) and the ledger of passes
whose copies are queued (`queued_runs`, `queued_copies`) live only where `execution:
workers` runs, so they are made by `ensure_schema` (at `ocimirror worker` start-up and
before a pass first enqueues) rather than by the state database's Alembic migrations:
a SQLite or in-process database never carries them. Processes starting at once create
them one after the other, under a PostgreSQL advisory lock held by the transaction.

procrastinate keeps no record of its schema's version, so this module does
(`ocimirror_queue_schema`: the procrastinate version whose schema is installed). Under the
same lock, a schema made by an older procrastinate gets the migrations procrastinate ships
(`sql/migrations`, named `MM.mm.pp_NN_*.sql`) that are newer than it and not newer than the
library, in their order, in one transaction; a schema of a newer procrastinate than the
library is refused with one line (upgrade ocimirror). A schema found without a record
(made before this record existed) is taken as the library's own version.

    queued_runs    one row per run whose copies went to the queue: what its planner
                   already counted (unchanged images, failures and successes of its own)
    queued_copies  one row per (run, destination) copy; `done` once a worker recorded it
    ocimirror_workers  one row per worker: its last heartbeat and what it did
    ocimirror_queued_jobs  one row per job of the jobs API handed to the queue (its
                   parallelism); the worker recording its last copy finishes it
    ocimirror_job_images  one row per image copy such a job awaits: its entry, the
                   copy's arguments, whether it was deferred yet (and the procrastinate
                   job deferred, None: it joined one), and once a worker recorded that
                   destination, `done` and the image's result
    ocimirror_host_limits  one row per registry host the workers send to: the shared
                   pace, back-off and remaining count (workers/hostlimits.py)
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from ..errors import ConfigError
from ..state.db import StateDB
from ..state.schema import jobs, runs

log = structlog.get_logger(__name__)

#: The pg_advisory_xact_lock key held while making the queue's tables ("ocimwork").
_PG_QUEUE_LOCK = 0x6F63696D776F726B

metadata = MetaData()

queued_runs = Table(
    "ocimirror_queued_runs",
    metadata,
    Column("run_id", BigInteger, ForeignKey(runs.c.id, ondelete="CASCADE"), primary_key=True),
    Column("mirror", String(255), nullable=False),
    #: Images the plan found unchanged or immutable (the run's `unchanged` count).
    Column("unchanged", Integer, nullable=False, server_default=text("0")),
    #: Successes (nothing to copy, purged tags) and failures the planner saw itself.
    Column("good", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    #: Its failure lines (plan errors, purge errors), the first few of the run's `error`.
    Column("errors", JSON, nullable=False),
)

queued_copies = Table(
    "ocimirror_queued_copies",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "run_id",
        BigInteger,
        ForeignKey("ocimirror_queued_runs.run_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("mirror", String(255), nullable=False),
    Column("target", Text, nullable=False),
    Column("source_ref", Text, nullable=False),
    Column("dest_ref", Text, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("source_digest", Text, nullable=True),
    Column("immutable", Boolean, nullable=False, server_default=text("false")),
    Column("done", Boolean, nullable=False, server_default=text("false")),
    Index("ix_ocimirror_queued_copies_dest_ref_done", "dest_ref", "done"),
    Index("ix_ocimirror_queued_copies_run_id_done", "run_id", "done"),
)


queued_jobs = Table(
    "ocimirror_queued_jobs",
    metadata,
    #: A job of the jobs API whose image copies were handed to the queue (`jobs.id`).
    Column("job_id", String(36), ForeignKey(jobs.c.id, ondelete="CASCADE"), primary_key=True),
    #: The request's `parallelism`: how many of its entries may be in flight at once.
    Column("parallelism", Integer, nullable=False),
)

job_copies = Table(
    "ocimirror_job_images",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "job_id",
        String(36),
        ForeignKey("ocimirror_queued_jobs.job_id", ondelete="CASCADE"),
        nullable=False,
    ),
    #: The entry of the job (its index in the request) this image belongs to.
    Column("entry", Integer, nullable=False),
    Column("dest_ref", Text, nullable=False),
    #: The queued copy's arguments (`CopyJob.args()`), deferred when its entry is admitted.
    Column("args", JSON, nullable=False),
    Column("deferred", Boolean, nullable=False, server_default=text("false")),
    #: The procrastinate job deferred for it; None when it joined one already queued.
    Column("queue_job", BigInteger, nullable=True),
    Column("done", Boolean, nullable=False, server_default=text("false")),
    Column("result", JSON, nullable=True),
    Index("ix_ocimirror_job_images_dest_ref_done", "dest_ref", "done"),
    Index("ix_ocimirror_job_images_job_id", "job_id"),
)


workers = Table(
    "ocimirror_workers",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_heartbeat", DateTime(timezone=True), nullable=False),
    #: Seconds without a heartbeat after which the worker counts as gone.
    Column("stalled_after", Float, nullable=False),
    Column("busy", Integer, nullable=False, server_default=text("0")),
    Column("done", BigInteger, nullable=False, server_default=text("0")),
    Column("failed", BigInteger, nullable=False, server_default=text("0")),
)


#: Times are PostgreSQL's (`extract(epoch FROM now())`), in seconds.
host_limits = Table(
    "ocimirror_host_limits",
    metadata,
    Column("host", String(255), primary_key=True),
    #: The pace's theoretical arrival time (GCRA) and its rate and burst (None: unpaced).
    Column("tat", Float, nullable=False),
    Column("rate", Float, nullable=True),
    Column("burst", Integer, nullable=False),
    #: Requests in flight allowed across every worker (the places' limit).
    Column("concurrency", Integer, nullable=False),
    #: No request starts before this time (Retry-After, back-off).
    Column("hold_until", Float, nullable=False),
    #: When the pace was last taken.
    Column("seen", Float, nullable=False),
    #: The AIMD policy's state (aimd.AimdPolicy.state) and the latest time it saw.
    Column("policy", JSONB, nullable=True),
    Column("clock", Float, nullable=True),
    #: The remaining count last announced, and when (None: never).
    Column("remaining", Integer, nullable=True),
    Column("remaining_at", Float, nullable=True),
)


queue_schema = Table(
    "ocimirror_queue_schema",
    metadata,
    #: The procrastinate version whose schema (with its migrations) is installed.
    Column("procrastinate", String(32), primary_key=True),
)

#: A migration file of procrastinate's: `03.04.00_01_pre_add_….sql`.
_MIGRATION = re.compile(r"^(\d+)\.(\d+)\.(\d+)_(\d+)_.*\.sql$")


def version_tuple(version: str) -> tuple[int, int, int]:
    """`3.10.0` (or `3.10.0.dev1`, `3.10`) as (3, 10, 0); ConfigError if it is not one."""
    parts = re.findall(r"\d+", version)[:3]
    if not parts:
        raise ConfigError(f"not a procrastinate version: {version!r}")
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    return numbers[0], numbers[1], numbers[2]


def migrations_between(
    folder: Path, installed: tuple[int, int, int], library: tuple[int, int, int]
) -> list[Path]:
    """procrastinate's migration files newer than `installed`, up to `library`, in order."""
    found: list[tuple[tuple[int, int, int, int], Path]] = []
    for path in folder.iterdir():
        m = _MIGRATION.match(path.name)
        if m is None:
            continue
        version = (int(m[1]), int(m[2]), int(m[3]))
        if installed < version <= library:
            found.append(((*version, int(m[4])), path))
    return [path for _, path in sorted(found)]


def require_postgres(state: StateDB) -> None:
    """Refuse `execution: workers` on a SQLite state database, saying what would work."""
    if state.is_sqlite:
        raise ConfigError(
            "execution: workers needs a PostgreSQL state database (state:"
            " postgresql://user@host/db); SQLite runs copies in-process (execution: in-process)"
        )


def procrastinate_url(state: StateDB) -> str:
    """The libpq URL of the state database, for procrastinate's psycopg connector."""
    return state.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def ensure_schema(
    state: StateDB, *, library: str | None = None, migrations: Path | None = None
) -> list[str]:
    """Make (or migrate) procrastinate's schema and the ledger's tables; the migrations run.

    `library` and `migrations` default to the installed procrastinate's version and its
    migrations folder (given only by tests).
    """
    require_postgres(state)
    import procrastinate
    import psycopg
    from procrastinate.schema import SchemaManager

    library = library or procrastinate.__version__
    folder = migrations or Path(SchemaManager.get_migrations_path())
    applied: list[str] = []
    connect = psycopg.AsyncConnection.connect(procrastinate_url(state), autocommit=True)
    async with await connect as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_QUEUE_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ocimirror_queue_schema"
            " (procrastinate VARCHAR(32) PRIMARY KEY)"
        )
        cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NULL")
        row = await cur.fetchone()
        recorded = await (
            await conn.execute("SELECT procrastinate FROM ocimirror_queue_schema")
        ).fetchall()
        if row is not None and row[0]:
            await conn.execute(SchemaManager.get_schema())
        elif recorded:
            installed = str(recorded[0][0])
            if version_tuple(installed) > version_tuple(library):
                raise ConfigError(
                    f"the queue's schema in the state database is procrastinate {installed},"
                    f" newer than this ocimirror's procrastinate {library}: upgrade ocimirror"
                    " (every worker and serve of one database run the same version)"
                )
            for path in migrations_between(
                folder, version_tuple(installed), version_tuple(library)
            ):
                await conn.execute(path.read_text(encoding="utf-8"))
                applied.append(path.name)
        if [r[0] for r in recorded] != [library]:
            await conn.execute("DELETE FROM ocimirror_queue_schema")
            await conn.execute("INSERT INTO ocimirror_queue_schema VALUES (%s)", (library,))
    if applied:
        log.info("procrastinate schema migrated", to=library, migrations=applied)
    async with state.engine.connect() as sa_conn, sa_conn.begin():
        await sa_conn.execute(select(func.pg_advisory_xact_lock(_PG_QUEUE_LOCK)))
        await sa_conn.run_sync(_create_ledger)
    return applied


def _create_ledger(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)
