"""approvals: the pending-queue projection written by the approval workflow

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workflow_id", sa.String(length=200), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("kind", _enum("approvalkind", "tenant_onboarding"), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column(
            "decider_role",
            _enum(
                "role",
                "super_admin",
                "tenant_admin",
                "user",
                "readonly",
                "agent",
                "service_account",
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            _enum(
                "approvalstatus", "pending", "approved", "rejected", "changes_requested", "expired"
            ),
            nullable=False,
        ),
        sa.Column("requested_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("due_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("escalated_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("decided_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_approvals_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        # The pending queue, oldest first, keyset-paginated: across tenants and per tenant.
        batch_op.create_index("ix_approvals_queue", ["status", "requested_at", "id"])
        batch_op.create_index(
            "ix_approvals_tenant_queue", ["tenant_id", "status", "requested_at", "id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_index("ix_approvals_tenant_queue")
        batch_op.drop_index("ix_approvals_queue")
    op.drop_table("approvals")
