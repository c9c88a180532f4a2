"""connector sync: two-way profiles (the backward leg's position, each side's version of a linked
pair) and the run's unchanged records and conflicts

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_profiles") as batch:
        batch.add_column(
            sa.Column(
                "direction",
                sa.Enum("one_way", "two_way", name="syncdirection", native_enum=False, length=32),
                nullable=False,
                server_default="one_way",
            )
        )
        batch.add_column(
            sa.Column("back_cursor", models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("back_page_cursor", sa.String(length=2000), nullable=True))
        batch.add_column(
            sa.Column("back_pending_cursor", models.base.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("sync_mappings") as batch:
        batch.add_column(
            sa.Column("source_version", models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("target_version", models.base.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_index("ix_sync_mappings_profile_target", "sync_mappings", ["profile_id", "target_id"])
    with op.batch_alter_table("sync_runs") as batch:
        batch.add_column(sa.Column("unchanged", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("conflicts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("conflict_sample", sa.JSON(), nullable=False, server_default="[]")
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_runs") as batch:
        batch.drop_column("conflict_sample")
        batch.drop_column("conflicts")
        batch.drop_column("unchanged")
    op.drop_index("ix_sync_mappings_profile_target", table_name="sync_mappings")
    with op.batch_alter_table("sync_mappings") as batch:
        batch.drop_column("target_version")
        batch.drop_column("source_version")
    with op.batch_alter_table("sync_profiles") as batch:
        batch.drop_column("back_pending_cursor")
        batch.drop_column("back_page_cursor")
        batch.drop_column("back_cursor")
        batch.drop_column("direction")
