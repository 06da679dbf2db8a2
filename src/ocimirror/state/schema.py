"""The tables of the state database, their value types and their datetime convention.

    runs          one row per sync of a mirror: trigger, status, times and counts
    task_results  one row per image a run looked at, with why and what happened
    synced        the last successful state of each destination reference, upserted;
                  `synced_at` is the last time the target was copied or HEADed (a pass
                  trusting the state records nothing, so `verify_every` counts from it)
    jobs          work asked of the HTTP service: request, progress and result as JSON

Every datetime is timezone-aware UTC going in and coming out; SQLite keeps them as naive
UTC text, and they are made aware again when read (`UTCDateTime`). `metadata` is kept in
step with the Alembic migrations in `migrations/` (`tests/test_state.py` compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, get_args

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
    false,
    text,
)

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
#: The error of a run or job whose process stopped before it finished.
INTERRUPTED_ERROR = "interrupted: the process running it stopped before it finished"


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime, what: str) -> datetime:
    """Return `value` in UTC, refusing a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, not naive: {value!r}")
    return value.astimezone(UTC)


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
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
        utc = as_utc(value, "a state database time")
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
    # The image's blobs by what was done (revision 0003: rows from before read 0).
    Column("blobs_copied", Integer, nullable=False, server_default=text("0")),
    Column("blobs_mounted", Integer, nullable=False, server_default=text("0")),
    Column("blobs_skipped", Integer, nullable=False, server_default=text("0")),
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
