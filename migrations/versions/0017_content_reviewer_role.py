"""content reviews decided by a named role: the tenant's reviewer role (tenant_admin, the
default, or user)

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("content_policies") as batch:
        batch.add_column(
            sa.Column(
                "reviewer_role",
                sa.Enum(
                    "super_admin",
                    "tenant_admin",
                    "user",
                    "readonly",
                    "agent",
                    "service_account",
                    name="role",
                    native_enum=False,
                    length=32,
                ),
                nullable=False,
                server_default="tenant_admin",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("content_policies") as batch:
        batch.drop_column("reviewer_role")
