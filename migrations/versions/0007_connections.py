"""connections: tenants' links to their own systems (credentials live in the secret store)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("connector_id", sa.String(length=64), nullable=False),
        sa.Column("auth_kind", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("account", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("connected", "disconnected", name="connectionstatus", native_enum=False,
                    length=32),
            nullable=False,
        ),
        sa.Column(
            "health",
            sa.Enum("healthy", "degraded", "auth_failed", "unreachable", name="connectionhealth",
                    native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("checked_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("auth_notified_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_connections_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connections")),
    )  # fmt: skip
    op.create_index(
        "ix_connections_tenant_listing", "connections", ["tenant_id", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_connections_tenant_listing", table_name="connections")
    op.drop_table("connections")
