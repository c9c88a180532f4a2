"""connection holds: a plan slot held for each connection being set up

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connection_holds",
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("held_until", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_connection_holds_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_connection_holds")),
    )
    op.create_index(
        op.f("ix_connection_holds_tenant_id"), "connection_holds", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_connection_holds_tenant_id"), table_name="connection_holds")
    op.drop_table("connection_holds")
