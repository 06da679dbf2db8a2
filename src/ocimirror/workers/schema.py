"""The tables the queue needs beside the state database's own, made idempotently.

procrastinate's schema (its jobs, events, workers and locks) and the ledger of passes
whose copies are queued (`queued_runs`, `queued_copies`) live only where `execution:
workers` runs, so they are made by `ensure_schema` (at `ocimirror worker` start-up and
before a pass first enqueues) rather than by the state database's Alembic migrations:
a SQLite or in-process database never carries them. Processes starting at once create
them one after the other, under a PostgreSQL advisory lock held by the transaction.

    queued_runs    one row per run whose copies went to the queue: what its planner
                   already counted (unchanged images, failures and successes of its own)
    queued_copies  one row per (run, destination) copy; `done` once a worker recorded it
    ocimirror_workers  one row per worker: its last heartbeat and what it did
    ocimirror_job_copies  one row per image copy a job of the jobs API awaits: the
                   procrastinate job it deferred (None: it joined one), and once a worker
                   recorded that destination, `done` and the image's result
    ocimirror_host_limits  one row per registry host the workers send to: the shared
                   pace, back-off and remaining count (workers/hostlimits.py)
"""

from __future__ import annotations

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
from ..state.schema import runs

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


job_copies = Table(
    "ocimirror_job_copies",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    #: The copy (flight) of a job of the jobs API that awaits this image.
    Column("flight", String(64), nullable=False),
    Column("dest_ref", Text, nullable=False),
    #: The procrastinate job deferred for it; None when it joined one already queued.
    Column("queue_job", BigInteger, nullable=True),
    Column("done", Boolean, nullable=False, server_default=text("false")),
    Column("result", JSON, nullable=True),
    Index("ix_ocimirror_job_copies_dest_ref_done", "dest_ref", "done"),
    Index("ix_ocimirror_job_copies_flight", "flight"),
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


async def ensure_schema(state: StateDB) -> None:
    """Make procrastinate's schema and the ledger's tables where they are missing."""
    require_postgres(state)
    import psycopg
    from procrastinate.schema import SchemaManager

    connect = psycopg.AsyncConnection.connect(procrastinate_url(state), autocommit=True)
    async with await connect as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_QUEUE_LOCK,))
        cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NULL")
        row = await cur.fetchone()
        if row is not None and row[0]:
            await conn.execute(SchemaManager.get_schema())
    async with state.engine.connect() as sa_conn, sa_conn.begin():
        await sa_conn.execute(select(func.pg_advisory_xact_lock(_PG_QUEUE_LOCK)))
        await sa_conn.run_sync(_create_ledger)


def _create_ledger(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)
