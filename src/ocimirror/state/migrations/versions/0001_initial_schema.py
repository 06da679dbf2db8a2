"""Initial schema: runs, task_results, synced and jobs.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGSERIAL on PostgreSQL; on SQLite only "INTEGER PRIMARY KEY" is the autoincrementing rowid.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "runs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("mirror", sa.String(length=255), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("copied", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("unchanged", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("skipped", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "\"status\" IN ('running', 'ok', 'partial', 'failed', 'interrupted')",
            name=op.f("ck_runs_status"),
        ),
        sa.CheckConstraint(
            "\"trigger\" IN ('schedule', 'manual', 'api', 'cli')", name=op.f("ck_runs_trigger")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_mirror_id"), "runs", ["mirror", "id"])
    op.create_index(op.f("ix_runs_status"), "runs", ["status"])

    op.create_table(
        "task_results",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", BIG_ID, nullable=False),
        sa.Column("mirror", sa.String(length=255), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("source_ref", sa.Text(), nullable=False),
        sa.Column("dest_ref", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source_digest", sa.Text(), nullable=True),
        sa.Column("target_digest", sa.Text(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("seconds", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("immutable", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", TIME, nullable=False),
        sa.CheckConstraint(
            "\"reason\" IN ('new', 'changed', 'missing-at-target', 'unchanged', 'immutable')",
            name=op.f("ck_task_results_reason"),
        ),
        sa.CheckConstraint(
            "\"status\" IN ('copied', 'unchanged', 'failed', 'skipped')",
            name=op.f("ck_task_results_status"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_task_results_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_results")),
    )
    op.create_index(op.f("ix_task_results_run_id"), "task_results", ["run_id"])
    op.create_index(op.f("ix_task_results_mirror_dest_ref"), "task_results", ["mirror", "dest_ref"])

    op.create_table(
        "synced",
        sa.Column("mirror", sa.String(length=255), nullable=False),
        sa.Column("dest_ref", sa.Text(), nullable=False),
        sa.Column("source_ref", sa.Text(), nullable=False),
        sa.Column("source_digest", sa.Text(), nullable=False),
        sa.Column("target_digest", sa.Text(), nullable=False),
        sa.Column("synced_at", TIME, nullable=False),
        sa.Column("immutable", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("mirror", "dest_ref", name=op.f("pk_synced")),
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "\"state\" IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')",
            name=op.f("ck_jobs_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"])
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])


def downgrade() -> None:
    """Downgrade the schema: drop every table."""
    op.drop_table("jobs")
    op.drop_table("synced")
    op.drop_table("task_results")
    op.drop_table("runs")
