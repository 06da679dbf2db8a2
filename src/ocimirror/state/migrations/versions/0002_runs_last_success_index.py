"""An index for each mirror's last successful run: runs (mirror, status, finished_at).

The dashboard and `status` ask, per configured mirror, when its latest `ok` run finished.
With this index that is one index lookup per mirror, however many runs are recorded (the
`status` index alone made it read every `ok` run of every mirror).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema: add the index."""
    op.create_index(
        op.f("ix_runs_mirror_status_finished_at"), "runs", ["mirror", "status", "finished_at"]
    )


def downgrade() -> None:
    """Downgrade the schema: drop the index."""
    op.drop_index(op.f("ix_runs_mirror_status_finished_at"), table_name="runs")
