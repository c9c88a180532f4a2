"""connector sync: profiles, id mappings and run statistics

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_profiles",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("source_connection_id", sa.Uuid(), nullable=False),
        sa.Column("target_connection_id", sa.Uuid(), nullable=False),
        sa.Column("source_resource", sa.String(length=64), nullable=False),
        sa.Column("target_resource", sa.String(length=64), nullable=False),
        sa.Column("field_mapping", sa.JSON(), nullable=False),
        sa.Column(
            "match_rule",
            sa.Enum("external_id", "external_id_then_email", name="matchrule",
                    native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("interval", sa.Interval(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("active", "paused", name="syncstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("cursor", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("page_cursor", sa.String(length=2000), nullable=True),
        sa.Column("pending_cursor", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sync_profiles_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_connection_id"], ["connections.id"],
            name=op.f("fk_sync_profiles_source_connection_id_connections"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_connection_id"], ["connections.id"],
            name=op.f("fk_sync_profiles_target_connection_id_connections"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_profiles")),
    )  # fmt: skip
    op.create_index(
        "ix_sync_profiles_tenant_listing", "sync_profiles", ["tenant_id", "created_at", "id"]
    )
    op.create_table(
        "sync_mappings",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("profile_id", sa.Uuid(), nullable=False),
        sa.Column("source_id", sa.String(length=200), nullable=False),
        sa.Column("target_id", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["sync_profiles.id"],
            name=op.f("fk_sync_mappings_profile_id_sync_profiles"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_mappings")),
        sa.UniqueConstraint(
            "profile_id", "source_id", name=op.f("uq_sync_mappings_profile_id_source_id")
        ),
    )  # fmt: skip
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("profile_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_run_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("read", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["sync_profiles.id"],
            name=op.f("fk_sync_runs_profile_id_sync_profiles"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        sa.UniqueConstraint("workflow_run_id", name=op.f("uq_sync_runs_workflow_run_id")),
    )  # fmt: skip
    op.create_index("ix_sync_runs_profile_listing", "sync_runs", ["profile_id", "started_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_sync_runs_profile_listing", table_name="sync_runs")
    op.drop_table("sync_runs")
    op.drop_table("sync_mappings")
    op.drop_index("ix_sync_profiles_tenant_listing", table_name="sync_profiles")
    op.drop_table("sync_profiles")
