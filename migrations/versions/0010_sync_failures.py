"""connector sync: failed runs in a row, pending backfills, cursor restarts per run

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_profiles") as batch:
        batch.add_column(sa.Column("failed_runs", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column(
                "backfill_requested_at", models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch.add_column(
            sa.Column("backfill_since", models.base.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("sync_runs") as batch:
        batch.add_column(
            sa.Column("cursor_restarts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_runs") as batch:
        batch.drop_column("cursor_restarts")
    with op.batch_alter_table("sync_profiles") as batch:
        batch.drop_column("backfill_since")
        batch.drop_column("backfill_requested_at")
        batch.drop_column("failed_runs")
