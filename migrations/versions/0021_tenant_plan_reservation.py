"""a plan change under way holds the tenant to the stricter of its plans: the plan being
changed to, until when

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("plan_reserved", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("plan_reserved_until", models.base.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("plan_reserved_until")
        batch.drop_column("plan_reserved")
