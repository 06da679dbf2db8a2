"""The blobs of each image a run copied: task_results (blobs_copied, blobs_mounted,
blobs_skipped).

A pass copied by queue workers is reported by the process that planned it from what the
workers recorded here; without these columns its `ocimirror_blobs` metrics stayed at 0,
where an in-process pass counts every blob copied, mounted or skipped. Rows written
before this revision read 0.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("blobs_copied", "blobs_mounted", "blobs_skipped")


def upgrade() -> None:
    """Upgrade the schema: add the three counts, 0 for the rows already there."""
    for name in COLUMNS:
        op.add_column(
            "task_results",
            sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False),
        )


def downgrade() -> None:
    """Downgrade the schema: drop them (SQLite rebuilds the table)."""
    with op.batch_alter_table("task_results") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
